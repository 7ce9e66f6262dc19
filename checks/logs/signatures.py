"""The corruption signatures the `logs` checker looks for: one table, easy to extend.

Each row names a signature, the finding code it reports under, a literal `trigger` that every
matching line contains (logs are scanned for the triggers first, at the speed of `bytes.find`; the
regular expression runs only on lines that hold one), the pattern itself, a severity, what it means,
the advice a customer gets, and a real-looking `example` line (a test checks every example matches
its own row). Rows are tried in order: put the specific ones before the general ones.

To add one: append a `Signature(...)` to SIGNATURES; a new code also needs a line in CODES and in the
README's table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Tuple

from fsaudit.model import Severity

CRITICAL, WARNING = Severity.CRITICAL, Severity.WARNING

CODES = {
    "block-io-error": "the kernel's block layer or a disk driver reported a failed read or write",
    "filesystem-error": "ext2/3/4, XFS or btrfs reported corruption, a checksum failure or a journal abort",
    "postgres-corruption": "PostgreSQL reported a damaged page, block, tuple, TOAST value or transaction "
    "status",
    "zodb-corruption": "ZODB/ZEO reported a missing object (POSKeyError) or damaged storage data",
    "python-corruption": "Python refused a damaged .pyc or source file (bad marshal data, bad magic number, "
    "null bytes)",
    "ldap-corruption": "slapd's LMDB or Berkeley DB backend reported damaged data or asked for recovery",
    "sqlite-corruption": "an application reported a damaged SQLite database",
    "io-error": "a program reported an input/output error (EIO) while reading or writing a file",
}

ADVICE_STORAGE = (
    "Data written around this time may be lost: check the storage, run the package and database "
    "checks of fsaudit on this system, and restore damaged files from a backup."
)
ADVICE_FILESYSTEM = (
    "The filesystem found damage: unmount it and run fsck on it, then verify and restore the files it "
    "names from a backup."
)
ADVICE_POSTGRES = (
    "Run the fsaudit postgres check (amcheck) on this cluster; restore the damaged relation from a backup "
    "or REINDEX a damaged index, and do not run VACUUM FULL before that."
)
ADVICE_ZODB = (
    "Run the fsaudit zodb check (fsrefs) on this storage and restore the missing objects from a backup; "
    "do not pack the storage before that."
)
ADVICE_PYTHON = (
    "Delete the damaged .pyc file or __pycache__ directory (it is rebuilt); if a .py source is damaged, "
    "reinstall its package."
)
ADVICE_LDAP = (
    "Stop slapd, back up the database directory, and check it (mdb_stat / db_verify); restore it from an "
    "LDIF backup (slapadd) if it is damaged."
)
ADVICE_SQLITE = (
    "Check the database with `sqlite3 FILE 'PRAGMA integrity_check'` and restore it from a backup."
)
ADVICE_IO = "Find which file the program was using and verify it; check the storage."


@dataclass(frozen=True)
class Signature:
    """One kind of log line that says data was damaged or could not be read."""

    name: str
    code: str
    trigger: bytes
    pattern: str
    severity: Severity
    meaning: str
    advice: str
    example: str
    regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "regex", re.compile(self.pattern.encode()))


SIGNATURES: Tuple[Signature, ...] = (
    # -- the block layer and disk drivers ---------------------------------------------------------
    Signature(
        "lost-page-write", "block-io-error", b"page write",
        r"lost (?:async )?page write", CRITICAL,
        "the kernel could not write cached data to the disk: that write is lost", ADVICE_STORAGE,
        "Jun  3 12:00:01 vm42 kernel: [ 1234.5678] Buffer I/O error on dev dm-0, logical block 1234, "
        "lost async page write",
    ),
    Signature(
        "buffer-io-error", "block-io-error", b"Buffer I/O error",
        r"Buffer I/O error on (?:dev|device) ", CRITICAL,
        "the kernel could not read or write a filesystem block", ADVICE_STORAGE,
        "Jun  3 12:00:01 vm42 kernel: Buffer I/O error on device vda1, logical block 524304",
    ),
    Signature(
        "block-request-error", "block-io-error", b"error, dev ",
        r"(?:I/O|critical \w+|medium) error, dev [\w.-]+, sector \d+", CRITICAL,
        "a disk request failed", ADVICE_STORAGE,
        "Jun  3 12:00:01 vm42 kernel: blk_update_request: I/O error, dev vda, sector 2048 op 0x1:(WRITE) "
        "flags 0x800 phys_seg 1 prio class 0",
    ),
    Signature(
        "medium-error", "block-io-error", b"Medium Error",
        r"Sense Key : Medium Error|Add\. Sense: Unrecovered read error", CRITICAL,
        "the disk could not read back what was written", ADVICE_STORAGE,
        "Jun  3 12:00:01 vm42 kernel: sd 2:0:0:0: [sdb] tag#0 Sense Key : Medium Error [current]",
    ),
    # -- filesystems ------------------------------------------------------------------------------------
    Signature(
        "ext4-error", "filesystem-error", b"-fs error",
        r"EXT[234]-fs error", CRITICAL,
        "ext4 found damaged metadata", ADVICE_FILESYSTEM,
        "Jun  3 12:00:01 vm42 kernel: EXT4-fs error (device vda1): ext4_lookup:1602: inode #1048577: "
        "comm ls: deleted inode referenced: 1048602",
    ),
    Signature(
        "ext4-corruption", "filesystem-error", b"-fs (",
        r"EXT[234]-fs \([\w.-]+\): .*(?:[Cc]orrupt|checksum|bad block bitmap|Remounting filesystem read-only"
        r"|error count|failed to convert unwritten)", CRITICAL,
        "ext4 found damaged metadata or stopped writing", ADVICE_FILESYSTEM,
        "Jun  3 12:00:02 vm42 kernel: EXT4-fs (vda1): Remounting filesystem read-only",
    ),
    Signature(
        "journal-abort", "filesystem-error", b"JBD2",
        r"JBD2: .*(?:[Ee]rror|abort)|JBD2: Detected IO errors", CRITICAL,
        "the ext4 journal stopped after an error", ADVICE_FILESYSTEM,
        "Jun  3 12:00:02 vm42 kernel: JBD2: Detected IO errors while flushing file data on vda1-8",
    ),
    Signature(
        "xfs-corruption", "filesystem-error", b"XFS (",
        r"XFS \([\w.-]+\): (?:.*[Cc]orruption|Metadata CRC error|metadata I/O error|Internal error"
        r"|.*[Ss]hutting down filesystem|log I/O error|xfs_do_force_shutdown)", CRITICAL,
        "XFS found damaged metadata or shut the filesystem down", ADVICE_FILESYSTEM,
        "Jun  3 12:00:01 vm42 kernel: XFS (vdb1): Metadata corruption detected at "
        "xfs_dinode_verify+0xa0/0x5e0, inode 0x83 dinode",
    ),
    Signature(
        "btrfs-error", "filesystem-error", b"BTRFS",
        r"BTRFS (?:error|critical)"
        r"|BTRFS .*(?:csum failed|checksum verify failed|parent transid verify failed)",
        CRITICAL, "btrfs found a checksum mismatch or damaged metadata", ADVICE_FILESYSTEM,
        "Jun  3 12:00:01 vm42 kernel: BTRFS warning (device vdc): csum failed root 5 ino 257 off 0 csum "
        "0x98f94189 expected csum 0x4ea3f6e1 mirror 1",
    ),
    Signature(
        "structure-needs-cleaning", "filesystem-error", b"needs cleaning",
        r"[Ss]tructure needs cleaning", CRITICAL,
        "a program met filesystem corruption (EUCLEAN)", ADVICE_FILESYSTEM,
        "Jun  3 12:00:01 vm42 rsync[812]: readdir(\"/srv/data\"): Structure needs cleaning (117)",
    ),
    # -- PostgreSQL -----------------------------------------------------------------------------------
    Signature(
        "pg-invalid-page", "postgres-corruption", b"invalid page in block",
        r"invalid page in block \d+ of relation", CRITICAL,
        "a table or index page is damaged", ADVICE_POSTGRES,
        "2014-06-03 12:00:01.123 UTC [4242] ERROR:  invalid page in block 4 of relation base/16384/16397",
    ),
    Signature(
        "pg-could-not-read-block", "postgres-corruption", b"could not read block",
        r"could not read block \d+ in file", CRITICAL,
        "a block of a relation could not be read (gone or unreadable)", ADVICE_POSTGRES,
        "2014-06-03 12:00:01.123 UTC [4242] ERROR:  could not read block 12 in file \"base/16384/16397\": "
        "read only 0 of 8192 bytes",
    ),
    Signature(
        "pg-checksum-failure", "postgres-corruption", b"page verification failed",
        r"page verification failed, calculated checksum", CRITICAL,
        "a page's checksum does not match its content", ADVICE_POSTGRES,
        "2014-06-03 12:00:01.123 UTC [4242] WARNING:  page verification failed, calculated checksum 20919 "
        "but expected 15254",
    ),
    Signature(
        "pg-transaction-status", "postgres-corruption", b"status of transaction",
        r"could not access status of transaction \d+", CRITICAL,
        "a commit-log (pg_xact) page is damaged or missing", ADVICE_POSTGRES,
        "2014-06-03 12:00:01.123 UTC [4242] ERROR:  could not access status of transaction 3881909",
    ),
    Signature(
        "pg-toast-chunk", "postgres-corruption", b"chunk number",
        r"(?:unexpected|missing) chunk number \d+ .*for toast value", CRITICAL,
        "a TOASTed (large) value is damaged", ADVICE_POSTGRES,
        "2014-06-03 12:00:01.123 UTC [4242] ERROR:  unexpected chunk number 0 (expected 1) for toast value "
        "81235 in pg_toast_16397",
    ),
    Signature(
        "pg-beyond-eof", "postgres-corruption", b"unexpected data beyond EOF",
        r"unexpected data beyond EOF in block \d+ of relation", CRITICAL,
        "the kernel returned stale data for a relation's last block (a classic sign of lost writes)",
        ADVICE_POSTGRES,
        "2014-06-03 12:00:01.123 UTC [4242] ERROR:  unexpected data beyond EOF in block 311 of relation "
        "base/16384/16397",
    ),
    Signature(
        "pg-bad-alloc", "postgres-corruption", b"invalid memory alloc request size",
        r"invalid memory alloc request size \d+", CRITICAL,
        "a tuple header holds a nonsense length: the row is damaged", ADVICE_POSTGRES,
        "2014-06-03 12:00:01.123 UTC [4242] ERROR:  invalid memory alloc request size 18446744073709551613",
    ),
    Signature(
        "pg-index-corruption", "postgres-corruption", b"index \"",
        r"index \"[^\"]+\" contains (?:unexpected zero page|corrupted page)|right sibling's left-link doesn't"
        r" match|failed to re-find parent key in index", CRITICAL,
        "an index is damaged", ADVICE_POSTGRES,
        "2014-06-03 12:00:01.123 UTC [4242] ERROR:  index \"orders_pkey\" contains unexpected zero page "
        "at block 7",
    ),
    Signature(
        "pg-frozen-xid", "postgres-corruption", b"from before rel",
        r"found (?:xmin|multixact) \d+ from before rel(?:frozenxid|minmxid)", CRITICAL,
        "a row's transaction id is impossible: the page is damaged or reverted", ADVICE_POSTGRES,
        "2014-06-03 12:00:01.123 UTC [4242] ERROR:  found xmin 1234567 from before relfrozenxid 2345678",
    ),
    # -- ZODB / ZEO / Zope ----------------------------------------------------------------------------
    Signature(
        "zodb-poskeyerror", "zodb-corruption", b"POSKeyError",
        r"POSKeyError", CRITICAL,
        "an object the database refers to is missing", ADVICE_ZODB,
        "ZODB.POSException.POSKeyError: 0x3e1a",
    ),
    Signature(
        "zodb-corrupted-data", "zodb-corruption", b"Corrupted",
        r"Corrupted(?:Data|Transaction|TransactionRecord)?Error", CRITICAL,
        "a FileStorage record is damaged", ADVICE_ZODB,
        "2014-06-03T12:00:01 ERROR ZODB.FileStorage CorruptedDataError: Error reading unknown oid.  "
        "Found b'' at 81732",
    ),
    Signature(
        "zodb-format-error", "zodb-corruption", b"FileStorageFormatError",
        r"FileStorageFormatError", CRITICAL,
        "a FileStorage file is damaged or not a FileStorage", ADVICE_ZODB,
        "2014-06-03T12:00:01 ERROR ZEO.StorageServer FileStorageFormatError: /var/zeo/Data.fs",
    ),
    # -- Python -------------------------------------------------------------------------------------------
    Signature(
        "python-bad-marshal", "python-corruption", b"marshal data",
        r"bad marshal data", CRITICAL,
        "a compiled .pyc file is damaged", ADVICE_PYTHON,
        "ValueError: bad marshal data (unknown type code)",
    ),
    Signature(
        "python-bad-magic", "python-corruption", b"magic number",
        r"[Bb]ad magic number in", CRITICAL,
        "a compiled .pyc file is damaged or from another Python", ADVICE_PYTHON,
        "ImportError: bad magic number in 'plone.app.content': b'\\x00\\x00\\x00\\x00'",
    ),
    Signature(
        "python-null-bytes", "python-corruption", b"null bytes",
        r"cannot contain null bytes|expected string without null bytes", CRITICAL,
        "a Python source file holds zeros where text was (a block never written)", ADVICE_PYTHON,
        "SyntaxError: source code string cannot contain null bytes",
    ),
    # -- slapd (LMDB, Berkeley DB) -----------------------------------------------------------------------
    Signature(
        "lmdb-corrupted", "ldap-corruption", b"MDB_",
        r"MDB_(?:CORRUPTED|PAGE_NOTFOUND|INVALID|BAD_TXN)", CRITICAL,
        "slapd's LMDB database is damaged", ADVICE_LDAP,
        "Jun  3 12:00:01 vm42 slapd[901]: mdb_id2entry_get: failed: MDB_PAGE_NOTFOUND: "
        "Requested page not found",
    ),
    Signature(
        "lmdb-corrupted-text", "ldap-corruption", b"page was wrong type",
        r"Located page was wrong type", CRITICAL,
        "slapd's LMDB database is damaged", ADVICE_LDAP,
        "Jun  3 12:00:01 vm42 slapd[901]: mdb_search: failed: Located page was wrong type (-30796)",
    ),
    Signature(
        "bdb-recovery", "ldap-corruption", b"RUNRECOVERY",
        r"DB_RUNRECOVERY", CRITICAL,
        "the Berkeley DB environment needs recovery", ADVICE_LDAP,
        "Jun  3 12:00:01 vm42 slapd[901]: bdb(dc=example,dc=com): PANIC: fatal region error detected; "
        "run recovery DB_RUNRECOVERY",
    ),
    Signature(
        "bdb-panic", "ldap-corruption", b"fatal region error",
        r"PANIC: fatal region error detected", CRITICAL,
        "the Berkeley DB environment needs recovery", ADVICE_LDAP,
        "Jun  3 12:00:01 vm42 slapd[901]: bdb(dc=example,dc=com): PANIC: fatal region error detected; "
        "run recovery",
    ),
    # -- SQLite -------------------------------------------------------------------------------------------
    Signature(
        "sqlite-malformed", "sqlite-corruption", b"disk image is malformed",
        r"database disk image is malformed", CRITICAL,
        "an SQLite database is damaged", ADVICE_SQLITE,
        "2014-06-03 12:00:01,442 ERROR app.db sqlite3.DatabaseError: database disk image is malformed",
    ),
    # -- anything else that met EIO (after the specific rows) ---------------------------------------------
    Signature(
        "eio", "io-error", b"Input/output error",
        r"Input/output error", WARNING,
        "a program could not read or write a file", ADVICE_IO,
        "2014/06/03 12:00:01 [crit] 1234#1234: *1 pread() \"/srv/www/index.html\" failed "
        "(5: Input/output error)",
    ),
)  # fmt: skip

TRIGGERS: Tuple[bytes, ...] = tuple(dict.fromkeys(signature.trigger for signature in SIGNATURES))


def match(line: bytes) -> Signature | None:
    """The first signature `line` matches, if any."""
    for signature in SIGNATURES:
        if signature.trigger in line and signature.regex.search(line):
            return signature
    return None


def trigger_positions(block: bytes):
    """Start offsets of the lines of `block` that hold a trigger, in order (each line once)."""
    starts = set()
    for trigger in TRIGGERS:
        position = block.find(trigger)
        while position != -1:
            starts.add(block.rfind(b"\n", 0, position) + 1)
            end = block.find(b"\n", position)
            if end == -1:
                break
            position = block.find(trigger, end)
    return sorted(starts)

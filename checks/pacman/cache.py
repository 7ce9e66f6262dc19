"""The package files pacman keeps in its cache (`/var/cache/pacman/pkg/NAME-VERSION-ARCH.pkg.tar.*`):
finding the one of an installed package, and reading files from it, so a repair of an image can take
the bytes from the image itself (each to be checked against the database's sha256 before use)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import subprocess
import tarfile
import threading
from contextlib import contextmanager
from typing import IO, Dict, Iterator, Optional, Tuple

from fsaudit.target import Target
from fsaudit_checks.manifest.entries import Package
from fsaudit_checks.pacman.conf import Settings

SUFFIXES = (b".pkg.tar.zst", b".pkg.tar.xz", b".pkg.tar.gz", b".pkg.tar.bz2", b".pkg.tar")
MEMBER_LIMIT = 4 << 30
PKGINFO_LIMIT = 1 << 20
_CHUNK = 1 << 20
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


class CacheError(Exception):
    """A cached package file that cannot be used: damaged, of another package, or unreadable."""


def find(target: Target, settings: Settings, package: Package) -> Optional[bytes]:
    """The cached package file of exactly this package, version and architecture (path inside the
    root), or None."""
    if not package.version:
        return None
    for cachedir in settings.cachedirs:
        for arch in dict.fromkeys((package.architecture or "any", "any")):
            stem = os.fsencode(f"{package.name}-{package.version}-{arch}")
            for suffix in SUFFIXES:
                candidate = cachedir.rstrip(b"/") + b"/" + stem + suffix
                try:
                    if target.stat(candidate).st_size > 0:
                        return candidate
                except OSError:
                    continue
    return None


@contextmanager
def _zstd(raw: IO[bytes]):
    try:
        import zstandard
    except ImportError:
        zstandard = None
    if zstandard is not None:
        yield zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return
    program = shutil.which("zstd")
    if not program:
        raise CacheError(
            "a .pkg.tar.zst needs the zstd program (apt-get install zstd) or the zstandard module"
        )
    process = subprocess.Popen(
        [program, "-dcq"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=_ENV,
    )

    def feed():
        try:
            while True:
                chunk = raw.read(_CHUNK)
                if not chunk:
                    break
                process.stdin.write(chunk)
        except OSError:
            pass
        finally:
            try:
                process.stdin.close()
            except OSError:
                pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        yield process.stdout
    finally:
        process.stdout.close()
        process.kill()
        process.wait()
        feeder.join(timeout=5)


@contextmanager
def _decompressed(raw: IO[bytes], path: bytes):
    if path.endswith(b".zst"):
        with _zstd(raw) as stream:
            yield stream
    elif path.endswith(b".xz"):
        with lzma.LZMAFile(raw) as stream:
            yield stream
    elif path.endswith(b".gz"):
        with gzip.GzipFile(fileobj=raw) as stream:
            yield stream
    elif path.endswith(b".bz2"):
        with bz2.BZ2File(raw) as stream:
            yield stream
    else:
        yield raw


def _pkginfo(data: bytes) -> Dict[str, str]:
    values: Dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, equals, value = line.partition(" = ")
        if equals and not key.startswith("#"):
            values.setdefault(key.strip(), value.strip())
    return values


@contextmanager
def _tar(target: Target, path: bytes):
    with target.open(path) as raw, _decompressed(raw, path) as stream, _stream_tar(stream) as tar:
        yield tar


def _stream_tar(stream) -> tarfile.TarFile:
    return tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape")


def _name(member: tarfile.TarInfo) -> bytes:
    name = os.fsencode(member.name)
    return name[2:] if name.startswith(b"./") else name


def package_info(target: Target, path: bytes) -> Dict[str, str]:
    """The `.PKGINFO` of a package file (pkgname, pkgver, arch, ...)."""
    try:
        with _tar(target, path) as tar:
            for member in tar:
                if _name(member) == b".PKGINFO" and member.isfile():
                    reader = tar.extractfile(member)
                    return _pkginfo(reader.read(PKGINFO_LIMIT) if reader else b"")
    except (tarfile.TarError, OSError, EOFError, ValueError) as error:
        raise CacheError(f"{os.fsdecode(path)} is damaged: {error}") from None
    raise CacheError(f"{os.fsdecode(path)} has no .PKGINFO")


def check_identity(target: Target, path: bytes, package: Package) -> None:
    """Raise CacheError unless the package file's own `.PKGINFO` names this package and version."""
    info = package_info(target, path)
    if info.get("pkgname") != package.name or info.get("pkgver") != package.version:
        raise CacheError(
            f"{os.fsdecode(path)} holds {info.get('pkgname')} {info.get('pkgver')}, "
            f"not {package.name} {package.version}"
        )


def members(target: Target, path: bytes) -> Iterator[Tuple[bytes, tarfile.TarInfo, Optional[IO]]]:
    """(path inside the system, tar member, reader of a regular file's content) of every file the
    package installs; the package's own metadata files (`.PKGINFO`, `.MTREE`, ...) are left out."""
    try:
        with _tar(target, path) as tar:
            for member in tar:
                name = _name(member)
                if not name or (name.startswith(b".") and b"/" not in name):
                    continue
                yield b"/" + name.rstrip(b"/"), member, tar.extractfile(member) if member.isfile() else None
    except (tarfile.TarError, OSError, EOFError, ValueError) as error:
        raise CacheError(f"{os.fsdecode(path)} is damaged: {error}") from None


def read_file(
    target: Target, path: bytes, package: Package, wanted: bytes, limit: int = MEMBER_LIMIT
) -> bytes:
    """The packaged content of `wanted` (a path inside the system) from the cached package file of
    `package`, after checking that the file is that package."""
    check_identity(target, path, package)
    for name, member, reader in members(target, path):
        if name != wanted:
            continue
        if reader is None or member.size > limit:
            raise CacheError(f"{os.fsdecode(wanted)} is not a regular file of at most {limit:,} bytes")
        return reader.read(member.size)
    raise CacheError(f"{os.fsdecode(path)} has no {os.fsdecode(wanted)}")

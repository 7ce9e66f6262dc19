"""Issue 13.10 (walks): listing directories on a live system must not change their access times,
neither in the Target's walks nor in the `window` walk (worker processes) nor when files are hashed.
(The kernel updates a symlink's atime whenever it is read; no open flag prevents that: README.)"""

from __future__ import annotations

import os

from fixtures.window import IN_WINDOW, WINDOW, set_mtime
from fsaudit.checker import Context
from fsaudit.hashing import HashRequest, hash_files
from fsaudit.target import Target
from tests.conftest import fsaudit

OLD_ATIME = 1_000_000  # before every mtime below: relatime would refresh it on the next read


def _tree(root):
    for directory in ("srv/a/b", "srv/c", "home/u"):
        (root / directory).mkdir(parents=True, exist_ok=True)
        (root / directory / "file").write_text("content\n")
    set_mtime(root / "srv" / "c" / "file", IN_WINDOW)
    directories = [root] + [path for path in root.rglob("*") if path.is_dir()]
    files = [path for path in root.rglob("file")]
    for path in directories + files:
        st = os.stat(path)
        os.utime(path, ns=(OLD_ATIME * 10**9, st.st_mtime_ns))
    return directories, files


def _atimes(paths):
    return {str(p): os.stat(p).st_atime for p in paths}


def test_this_filesystem_would_record_reads(tmp_path):
    """The control: on this mount (relatime) a plain listing does change an old atime, so the
    tests below can see an update."""
    (tmp_path / "d").mkdir()
    os.utime(tmp_path / "d", (OLD_ATIME, os.stat(tmp_path / "d").st_mtime))
    os.listdir(tmp_path / "d")
    assert os.stat(tmp_path / "d").st_atime != OLD_ATIME


def test_walks_listings_and_hashing_leave_atimes_alone(tmp_path):
    root = tmp_path / "root"
    directories, files = _tree(root)
    before = _atimes(directories + files)
    target = Target(root)
    walked = [(directory, sorted(e.name for e in entries)) for directory, entries in target.walk("/")]
    assert (b"/srv/a/b", [b"file"]) in walked
    assert sorted(target.listdir("/srv")) == [b"a", b"c"]
    requests = [HashRequest(b"/" + os.fsencode(p.relative_to(root)), "md5") for p in files]
    assert all(r.digest for r in hash_files(target, requests, Context(jobs=2)))
    assert _atimes(directories + files) == before


def test_the_window_walk_leaves_atimes_alone(tmp_path):
    root = tmp_path / "root"
    directories, files = _tree(root)
    before = _atimes(directories + files)
    run = fsaudit("audit", "--root", root, "--check", "window", "--window", WINDOW, "--format", "json")
    assert run.code == 1, run.stderr
    assert {f["path"] for f in run.findings("window", "modified-in-window")} == {"/srv/c/file"}
    assert run.check("window")["stats"]["directories_scanned"] == len(directories)
    assert _atimes(directories + files) == before

"""Target: paths resolve inside the root; only regular files are read; nothing blocks or escapes."""

import errno
import hashlib
import os

import pytest

from fixtures.corrupt import replace_with_fifo
from fsaudit.hashing import HashRequest, hash_files
from fsaudit.target import NotRegularFile, Target


@pytest.fixture
def image(tmp_path):
    """A small image root with merged-/usr, an absolute symlink, a loop and a FIFO."""
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr" / "bin" / "ls").write_bytes(b"inside the image\n")
    os.symlink("usr/bin", root / "bin")
    os.symlink("/etc/target", root / "etc" / "absolute")  # points into the image, not the host
    (root / "etc" / "target").write_text("image etc\n")
    os.symlink("/../../../../etc/passwd", root / "etc" / "escape")
    os.symlink("loop-b", root / "etc" / "loop-a")
    os.symlink("loop-a", root / "etc" / "loop-b")
    (root / "etc" / "pipe").write_text("")
    replace_with_fifo(root / "etc" / "pipe")
    return root


def test_merged_usr_alias_resolves_inside_the_root(image):
    target = Target(image)
    assert target.read_bytes("/bin/ls") == b"inside the image\n"
    assert target.resolve("/bin/ls") == os.fsencode(image / "usr" / "bin" / "ls")


def test_absolute_symlinks_point_into_the_image(image):
    target = Target(image)
    assert target.read_bytes("/etc/absolute") == b"image etc\n"


def test_dotdot_never_climbs_out_of_the_root(image):
    target = Target(image)
    assert target.resolve("/etc/escape") == os.fsencode(image / "etc" / "passwd")
    with pytest.raises(FileNotFoundError):
        target.read_bytes("/etc/escape")


def test_a_symlink_loop_is_an_error_not_a_hang(image):
    with pytest.raises(OSError) as caught:
        Target(image).read_bytes("/etc/loop-a")
    assert caught.value.errno == errno.ELOOP


def test_a_path_below_a_missing_directory_stays_missing(image):
    """Directories are resolved once and reused; one that is missing keeps everything below it
    unresolved (as the kernel would), also after `..` and in any order of lookups."""
    target = Target(image)
    assert target.read_bytes("/bin/ls") == b"inside the image\n"
    for path in ("/gone/../bin/ls", "/gone/x/../../bin/ls", "/bin/gone/../ls"):
        with pytest.raises(FileNotFoundError):
            target.read_bytes(path)
    assert target.read_bytes("/usr/../bin/ls") == b"inside the image\n"
    assert target.read_bytes("/bin/ls") == b"inside the image\n"


def test_a_fifo_is_refused_without_blocking(image):
    with pytest.raises(NotRegularFile) as caught:
        Target(image).read_bytes("/etc/pipe")
    assert caught.value.kind == "FIFO"


def test_open_without_follow_refuses_a_final_symlink(image):
    with pytest.raises(OSError) as caught:
        Target(image).open("/etc/absolute", follow=False)
    assert caught.value.errno == errno.ELOOP


def test_directories_are_not_read_as_files(image):
    with pytest.raises(NotRegularFile) as caught:
        Target(image).open("/usr/bin")
    assert caught.value.kind == "directory"


def test_reading_does_not_change_atime(image):
    path = image / "usr" / "bin" / "ls"
    os.utime(path, (1_000_000, 1_000_000))
    Target(image).read_bytes("/usr/bin/ls")
    assert os.stat(path).st_atime == 1_000_000


def test_walk_lists_without_following_links(image):
    target = Target(image)
    seen = {}
    for directory, entries in target.walk("/"):
        seen[directory] = sorted(e.name for e in entries)
    assert b"/usr/bin" in seen
    assert b"/bin" not in seen  # a symlink to a directory is not entered
    assert b"pipe" in seen[b"/etc"]


def test_non_utf8_names_survive_the_walk(tmp_path):
    (tmp_path / "d").mkdir()
    raw = os.fsencode(tmp_path / "d") + b"/caf\xe9"
    with open(raw, "wb") as handle:
        handle.write(b"x")
    target = Target(tmp_path)
    names = [e.name for _, entries in target.walk("/d") for e in entries]
    assert names == [b"caf\xe9"]
    assert target.read_bytes(b"/d/caf\xe9") == b"x"


def test_hash_engine_reports_every_outcome_in_order(image):
    target = Target(image)
    requests = [
        HashRequest(b"/bin/ls", "md5"),
        HashRequest(b"/etc/pipe", "md5"),
        HashRequest(b"/etc/gone", "md5"),
        HashRequest(b"/usr/bin/ls", "sha256", expected_size=1),
    ]
    results = list(hash_files(target, requests, 2))
    assert [r.request for r in results] == requests
    assert results[0].digest == hashlib.md5(b"inside the image\n").hexdigest()
    assert isinstance(results[1].error, NotRegularFile)
    assert isinstance(results[2].error, FileNotFoundError)
    assert results[3].digest is None and results[3].size_differs


def test_live_root_drops_cached_pages_and_an_image_does_not(image):
    assert Target("/").drop_cache is True
    assert Target(image).drop_cache is False
    assert Target(image, drop_cache=True).drop_cache is True


def test_top_level_paths_of_the_live_root_have_one_slash():
    target = Target("/")
    assert target.resolve("/etc") == b"/etc"
    assert target.resolve("/etc", follow=False) == b"/etc"
    assert target.inner_path(target.resolve("/tmp")) == b"/tmp"


def test_a_directory_s_mode_comes_from_the_walk_that_resolved_it(image):
    # directory_mode resolves a path as a directory, symlinks followed inside the root, with the
    # mode its walk saw; 0 where the walk did not see one, so that the caller looks itself.
    target = Target(image)
    usr_bin = os.fsencode(image / "usr" / "bin")
    assert target.directory_mode("/bin") == (usr_bin, os.lstat(usr_bin).st_mode)  # through the alias
    assert target.directory_mode("/usr/bin/ls")[1] == os.lstat(image / "usr" / "bin" / "ls").st_mode
    assert target.directory_mode("/etc/gone")[1] == 0
    assert target.directory_mode("/")[1] == 0
    (image / "usr" / "up").symlink_to("bin/..")
    assert target.directory_mode("/usr/up") == (os.fsencode(image / "usr"), 0)  # `..` last: not seen
    with pytest.raises(OSError) as caught:
        target.directory_mode("/etc/loop-a")
    assert caught.value.errno == errno.ELOOP

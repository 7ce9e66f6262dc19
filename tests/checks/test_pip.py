"""`pip`: real virtualenvs with real installed wheels, corrupted on purpose."""

import os
import shutil

import pytest

from fixtures.apps import make_venv, make_wheel
from fixtures.corrupt import flip_byte, replace_with_fifo, truncate
from tests.conftest import fsaudit

FILES = {
    "shop/__init__.py": b"VERSION = '1.0'\n" + b"# padding\n" * 200,
    "shop/cart.py": b"def total(items):\n    return sum(items)\n" * 50,
    "shop/data/prices.json": b'{"apple": 1}\n',
    "shop/helpers.py": b"def helper():\n    return 1\n",
}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One real virtualenv with two wheels installed by pip; each test damages its own copy."""
    base = tmp_path_factory.mktemp("pip")
    wheel = make_wheel(base, "shop", "1.0", FILES)
    other = make_wheel(base, "tools", "2.3.1", {"tools.py": b"print('tools')\n"})
    make_venv(base / "srv" / "app" / "venv", [wheel, other])
    return base / "srv"


@pytest.fixture
def venv(template, tmp_path):
    paths = tmp_path / "srv"
    shutil.copytree(template, paths, symlinks=True)
    return paths, next(paths.glob("app/venv/lib/python*/site-packages"))


def test_clean_environment_is_ok(venv):
    paths, _ = venv
    run = fsaudit("audit", "--check", "pip", "--set", f"pip.paths={paths}", "--format", "json")
    assert run.code == 0, run.stdout
    check = run.check("pip")
    assert check["stats"]["environments"] == 1
    assert check["stats"]["distributions"] == 2
    assert check["stats"]["files_verified"] >= 8


def test_damage_is_found_per_distribution_with_reinstall_advice(venv):
    paths, site = venv
    flip_byte(site / "shop" / "cart.py", 100)  # same size, mtime kept
    truncate(site / "shop" / "__init__.py", 10)
    os.unlink(site / "shop" / "data" / "prices.json")
    replace_with_fifo(site / "shop" / "helpers.py")
    run = fsaudit("audit", "--check", "pip", "--set", f"pip.paths={paths}", "--format", "json", timeout=60)
    assert run.code == 2
    by_path = {f["path"].rsplit("/site-packages/", 1)[1]: f for f in run.findings("pip")}
    assert by_path["shop/cart.py"]["code"] == "content-differs"
    assert (
        by_path["shop/cart.py"]["details"]["actual_digest"]
        != by_path["shop/cart.py"]["details"]["expected_digest"]
    )
    assert by_path["shop/__init__.py"]["code"] == "content-differs"
    assert by_path["shop/__init__.py"]["details"]["actual_size"] == 10
    assert by_path["shop/data/prices.json"]["code"] == "missing"
    assert by_path["shop/helpers.py"]["code"] == "wrong-type"
    assert all(f["subject"] == "shop 1.0" for f in by_path.values())
    assert "pip install --force-reinstall --no-deps 'shop==1.0'" in by_path["shop/cart.py"]["advice"]


def test_damaged_record_is_reported_and_the_rest_still_verified(venv):
    paths, site = venv
    record = site / "shop-1.0.dist-info" / "RECORD"
    with open(record, "ab") as handle:
        handle.write(b"shop/broken.py,sha256=not-base64!!,12\n")
    run = fsaudit("audit", "--check", "pip", "--set", f"pip.paths={paths}", "--format", "json")
    assert run.code == 2
    assert run.codes("pip") == {"record-damaged"}
    assert run.check("pip")["stats"]["files_verified"] >= 8


def test_nothing_is_written_into_the_environment(venv):
    paths, site = venv
    before = sorted(str(p) for p in site.rglob("*"))
    fsaudit("audit", "--check", "pip", "--set", f"pip.paths={paths}")
    assert sorted(str(p) for p in site.rglob("*")) == before  # no __pycache__, no .pyc


def test_os_packaged_distributions_are_left_to_the_package_checker(tmp_path):
    """Debian ships dist-info with RECORD but no INSTALLER, and changes files (stripped libraries);
    those are dpkg's to verify. A pip-installed distribution in the same site is verified."""
    site = tmp_path / "usr" / "lib" / "python3" / "dist-packages"
    for name, installer in (("osmod", None), ("pipmod", b"pip\n")):
        dist = site / f"{name}-1.0.dist-info"
        dist.mkdir(parents=True)
        (site / f"{name}.py").write_bytes(b"changed after packaging\n")
        digest = "0" * 64  # hex digests, as Debian writes them
        (dist / "RECORD").write_text(f"{name}.py,sha256={digest},5\n")
        if installer:
            (dist / "INSTALLER").write_bytes(installer)
    run = fsaudit("audit", "--root", tmp_path, "--check", "pip", "--format", "json")
    assert run.code == 2
    assert [f["subject"] for f in run.findings("pip")] == ["pipmod 1.0"]
    assert run.check("pip")["stats"]["distributions_os_managed"] == 1

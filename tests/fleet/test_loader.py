"""The loader's parts, imported as the module it is (on a VM it runs as `python3 -c`)."""

import io
import json
import os
import zipfile

from fsaudit.fleet import loader
from fsaudit.fleet.bootstrap import LOADER, loader_config


def test_the_loader_sent_is_this_module_and_imports_without_running():
    with open(loader.__file__, encoding="utf-8") as handle:
        assert handle.read() == LOADER
    assert not hasattr(loader, "config")  # importing it did not start it


def test_the_config_is_read_as_the_literal_json_is_surrogate_pairs_joined():
    import base64

    text = base64.b64decode(loader_config(["fsaudit"], ["--root", "/mnt/\U0001f600"], True, "ab")).decode()
    assert "\\ud83d" in text  # json.dumps wrote the character as a surrogate pair
    config = loader.parse_config(text)
    assert config == {"command": ["fsaudit"], "args": ["--root", "/mnt/\U0001f600"], "bootstrap": True,
                      "sha256": "ab"}  # fmt: skip
    assert config == json.loads(text)


def test_which_finds_executables_only(tmp_path, monkeypatch):
    program = tmp_path / "tool"
    program.write_text("#!/bin/sh\n")
    (tmp_path / "plain").write_text("")
    os.chmod(program, 0o755)
    monkeypatch.setenv("PATH", f"/nonexistent:{tmp_path}")
    assert loader.which("tool") == str(program)
    assert loader.which("plain") is None
    assert loader.which(str(program)) == str(program)


def test_the_memory_importer_serves_modules_and_distributions_from_the_zip():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pkg/__init__.py", "VALUE = 42\n")
        archive.writestr("compat/pkg/__init__.py", "VALUE = 8\n")
        archive.writestr("dist_x-1.dist-info/METADATA", "Metadata-Version: 2.1\nName: dist-x\nVersion: 1\n")
    importer = loader.MemoryZip(buffer.getvalue(), ("compat/", ""))
    spec = importer.find_spec("pkg")
    assert spec.origin == "<fsaudit.pyz>/compat/pkg/__init__.py"  # compat first, as on an old Python
    assert importer.find_spec("absent") is None
    (dist,) = importer.find_distributions()
    assert dist.metadata["Name"] == "dist-x"

"""The build's one step that setup.cfg cannot say: the fsaudit(1) manual page is made from the click
commands (fsaudit/manpage.py) and installed as share/man/man1/fsaudit.1, so that `man fsaudit` works
wherever fsaudit is installed and always matches `--help`."""

import configparser
import importlib.util
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def expose_source_plugins() -> None:
    """Let the source tree's own plug-ins load as if fsaudit were installed: commands and report formats
    come from entry points (setup.cfg), and an isolated build has no installed fsaudit to read them
    from. checks/ is imported as fsaudit_checks, as the installed package is named."""
    checks = os.path.join(HERE, "checks")
    spec = importlib.util.spec_from_file_location(
        "fsaudit_checks", os.path.join(checks, "__init__.py"), submodule_search_locations=[checks]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["fsaudit_checks"] = module
    spec.loader.exec_module(module)
    config = configparser.ConfigParser()
    config.read(os.path.join(HERE, "setup.cfg"))
    points = config["options.entry_points"]
    meta = os.path.join(HERE, "build", "source-plugins", "fsaudit_source-0.dist-info")
    os.makedirs(meta, exist_ok=True)
    with open(os.path.join(meta, "METADATA"), "w", encoding="utf-8") as handle:
        handle.write("Metadata-Version: 2.1\nName: fsaudit-source\nVersion: 0\n")
    with open(os.path.join(meta, "entry_points.txt"), "w", encoding="utf-8") as handle:
        for group in points:
            if group.startswith("fsaudit."):
                handle.write(f"[{group}]\n{points[group].strip()}\n\n")
    sys.path.insert(0, os.path.dirname(meta))


expose_source_plugins()
from fsaudit.manpage import write_manpage  # noqa: E402 - the source tree, not an installed fsaudit

PAGE = os.path.join("build", "man", "fsaudit.1")
write_manpage(os.path.join(HERE, PAGE))
setup(data_files=[("share/man/man1", [PAGE])])

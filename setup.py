"""The build's one step that setup.cfg cannot say: the fsaudit(1) manual page is made from the click
commands (fsaudit/manpage.py) and installed as share/man/man1/fsaudit.1, so that `man fsaudit` works
wherever fsaudit is installed and always matches `--help`."""

import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fsaudit.manpage import write_manpage  # noqa: E402 - the source tree, not an installed fsaudit

PAGE = os.path.join("build", "man", "fsaudit.1")
write_manpage(os.path.join(HERE, PAGE))
setup(data_files=[("share/man/man1", [PAGE])])

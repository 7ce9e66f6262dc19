"""fsaudit: find the data a storage incident damaged on a Linux VM, and say what to do about it."""

__version__ = "0.1.0"

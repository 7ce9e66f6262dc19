"""fsaudit's own failures (as opposed to damage on the target, which is a Finding)."""


class FsauditError(Exception):
    """An error of fsaudit itself or of how it was called; the CLI shows it and exits 3."""


class UsageError(FsauditError):
    """The command line or config asks for something that cannot be done."""

"""fsaudit's built-in checkers, one package per family (a package's `__init__` is the checker,
the other modules its helpers); installed as the `fsaudit_checks` package."""

"""fsaudit's built-in checkers, one module each; installed as the `fsaudit_checks` package."""

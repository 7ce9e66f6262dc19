from fsaudit.escape import inert


def test_controls_are_escaped_and_plain_text_is_kept():
    assert inert("caf\u00e9 /usr/bin/sed") == "caf\u00e9 /usr/bin/sed"
    assert inert("x\x1b]0;pwned\x07y") == "x\\x1b]0;pwned\\x07y"
    assert inert("a\nOK forged\r") == "a\\x0aOK forged\\x0d"
    assert inert("\x9b2J\u202egnp.exe") == "\\x9b2J\\u202egnp.exe"

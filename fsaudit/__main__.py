from fsaudit.cli import run

run()

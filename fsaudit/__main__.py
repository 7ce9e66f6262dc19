from fsaudit.cli import main

main()

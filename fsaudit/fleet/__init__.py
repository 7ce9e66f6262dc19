"""`fsaudit fleet`: audit many VMs over SSH and aggregate their reports into one fleet view."""

"""Issue 13.11: a secret given on the command line shows in `ps` to every user of the host. A password
inside a DSN or URL given with --set is refused like `--set *.password`, and not repeated in the
error either."""

from __future__ import annotations

import pytest

from fsaudit.config import parse_sets
from fsaudit.errors import UsageError
from tests.conftest import fsaudit


@pytest.mark.parametrize(
    "item",
    [
        "postgres.dsn=host=/run/postgresql password=s3cret-value",
        "postgres.dsn=host=/run/postgresql user=u PASSWORD = s3cret-value",
        "postgres.dsn=host=db sslcert=c.pem sslkey=k.pem sslpassword=s3cret-value",
        "postgres.dsn=postgresql://auditor:s3cret-value@db.example/postgres",
        "postgres.dsn=postgresql://db.example/postgres?sslmode=require&password=s3cret-value",
        "ldap.url=ldap://admin:s3cret-value@127.0.0.1:389/",
        "ldap.replica_urls=ldaps://cn=admin:s3cret-value@replica.example",
        "postgres.password=s3cret-value",
        "ldap.bind_password=s3cret-value",
    ],
)
def test_a_password_on_the_command_line_is_refused_and_not_repeated(item):
    with pytest.raises(UsageError) as refused:
        parse_sets([item])
    assert "s3cret-value" not in str(refused.value)
    assert "password_file" in str(refused.value)
    run = fsaudit("audit", "--check", item.split(".")[0], "--format", "json", "--set", item)
    assert run.code == 3 and run.stdout == ""
    assert "password_file" in run.stderr and "s3cret-value" not in run.stderr


@pytest.mark.parametrize(
    "item",
    [
        "postgres.dsn=host=/run/postgresql user=password dbname=passwords",
        "postgres.dsn=postgresql://auditor@db.example:5432/postgres",
        "postgres.password_file=/etc/fsaudit/pg-password",
        "ldap.url=ldap://[::1]:389/",
        "ldap.url=ldapi://%2Frun%2Fslapd%2Fldapi",
        "ldap.base=cn=password,dc=example,dc=org",
    ],
)
def test_values_without_a_password_pass(item):
    parse_sets([item])

"""Inventories: hosts files, Ansible INI and YAML, --limit and --shard (pure logic)."""

import sys

import pytest

from fsaudit.errors import UsageError
from fsaudit.fleet.inventory import (
    detect_format,
    expand_ranges,
    limit,
    load_inventory,
    parse_hosts_file,
    parse_ini,
    parse_shard,
    parse_yaml,
    shard,
)

INI = """
# web servers
web[01:03].example.com
[db]
db1 ansible_host=10.0.0.5 ansible_port=2222 ansible_user=admin fsaudit_args="--check debian --jobs 2"
db2:2200
[db:vars]
fsaudit_python=/usr/bin/python3.11
[prod:children]
db
[prod:vars]
ansible_user=ops
"""

YAML = """
all:
  vars:
    ansible_user: ops
  hosts:
    lone.example.com:
  children:
    db:
      hosts:
        db1: {ansible_host: 10.0.0.5, ansible_port: 2222, ansible_user: admin}
        db2:
      vars:
        fsaudit_command: /opt/fsaudit/bin/fsaudit
    web:
      hosts:
        web[1:2]:
"""


def test_hosts_file_reads_user_host_port_and_comments():
    hosts = parse_hosts_file("# fleet\nvm1\nroot@vm2:2222  # comment\n\n[::1]:22\nops@[fe80::1]\n")
    assert [(h.name, h.user, h.address, h.port) for h in hosts] == [
        ("vm1", None, "vm1", None),
        ("vm2:2222", "root", "vm2", 2222),
        ("::1:22", None, "::1", 22),
        ("fe80::1", "ops", "fe80::1", None),
    ]


@pytest.mark.parametrize("bad", ["vm1 vm2", "vm:99999", "vm:port", "-oProxyCommand=x"])
def test_hosts_file_rejects_bad_lines_with_their_line_number(bad):
    with pytest.raises(UsageError, match="line 2"):
        parse_hosts_file(f"ok\n{bad}\n")


def test_ini_groups_children_vars_and_ranges():
    hosts = {h.name: h for h in parse_ini(INI)}
    assert sorted(hosts) == ["db1", "db2", "web01.example.com", "web02.example.com", "web03.example.com"]
    db1 = hosts["db1"]
    assert (db1.address, db1.port, db1.user) == ("10.0.0.5", 2222, "admin")  # host vars win over groups
    assert db1.groups == ["db", "prod"]
    assert db1.python == "/usr/bin/python3.11"
    assert db1.vars["fsaudit_args"] == "--check debian --jobs 2"
    assert (hosts["db2"].port, hosts["db2"].user) == (2200, "ops")
    assert hosts["web01.example.com"].user is None and hosts["web01.example.com"].python == "python3"


def test_yaml_inventory_like_ansible():
    hosts = {h.name: h for h in parse_yaml(YAML)}
    assert sorted(hosts) == ["db1", "db2", "lone.example.com", "web1", "web2"]
    assert (hosts["db1"].address, hosts["db1"].port, hosts["db1"].user) == ("10.0.0.5", 2222, "admin")
    assert hosts["db2"].user == "ops" and hosts["db2"].fsaudit_command == ["/opt/fsaudit/bin/fsaudit"]
    assert hosts["web2"].groups == ["web"]


def test_yaml_without_pyyaml_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(UsageError, match=r"pip install 'fsaudit\[fleet\]'"):
        parse_yaml(YAML)


def test_bad_yaml_is_a_usage_error():
    with pytest.raises(UsageError, match="group 'all' must be a mapping"):
        parse_yaml("all: [1, 2]\n")


def test_format_detection_and_duplicates(tmp_path):
    assert detect_format("inv.yml", "") == "yaml"
    assert detect_format("inventory", "all:\n  hosts:\n") == "yaml"
    assert detect_format("inventory", "[web]\nvm1\n") == "ini"
    assert detect_format("hosts", "vm1\nroot@vm2:22\n") == "hosts"
    path = tmp_path / "hosts"
    path.write_text("vm1\nvm2\nvm1\n")
    assert [h.name for h in load_inventory(str(path))] == ["vm1", "vm2"]
    with pytest.raises(UsageError, match="cannot read the inventory"):
        load_inventory(str(tmp_path / "missing"))


def test_ranges():
    assert expand_ranges("vm[08:10]") == ["vm08", "vm09", "vm10"]
    assert expand_ranges("db-[a:c]-[1:2]") == ["db-a-1", "db-a-2", "db-b-1", "db-b-2", "db-c-1", "db-c-2"]


def test_limit_by_host_or_group_with_exclusion():
    hosts = parse_ini(INI)
    assert [h.name for h in limit(hosts, "prod")] == ["db1", "db2"]
    assert [h.name for h in limit(hosts, "web*,!web02*")] == ["web01.example.com", "web03.example.com"]
    assert [h.name for h in limit(hosts, "prod:&db1")] == ["db1"]
    assert limit(hosts, None) == hosts


def test_shards_split_the_hosts_deterministically_and_completely():
    hosts = parse_hosts_file("\n".join(f"vm{i}" for i in range(300)))
    parts = [shard(hosts, i, 4) for i in range(1, 5)]
    names = [h.name for part in parts for h in part]
    assert sorted(names) == sorted(h.name for h in hosts)  # every host once
    assert all(40 < len(part) < 110 for part in parts)
    reordered = list(reversed(hosts))[:150]  # another control host's copy: other order, fewer hosts
    assert {h.name for h in shard(reordered, 2, 4)} <= {h.name for h in parts[1]}
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "x"):
        with pytest.raises(UsageError):
            parse_shard(bad)

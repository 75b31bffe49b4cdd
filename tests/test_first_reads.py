"""The first read of a colleague's feed must not be empty: through the mount (`ls`, `cat`), the
CLI (`kacheryfs feed read`) and Python (`get_num_messages`, `get_next_messages`), each on a
node that has never seen the feed, each on the first call. Real daemons over 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .mounting import KACHERYFS
from .test_mount_network import LOCAL, wait_until_connected


def cli(node, *args) -> subprocess.CompletedProcess:
    return subprocess.run([KACHERYFS, *args], env=node.env, capture_output=True, text=True, timeout=60)


def new_feed(owner, label: str, count: int) -> str:
    feed_id = cli(owner, "feed", "create", "--label", label).stdout.strip()
    messages = [json.dumps({"n": i}) for i in range(count)]
    appended = cli(owner, "feed", "append", feed_id, "queue", *messages)
    assert appended.returncode == 0, appended.stderr
    return feed_id


@pytest.mark.timeout(180)
def test_first_reads_of_a_colleagues_feed_are_complete(stack):
    mount, daemon = stack
    a = daemon("a", "daemon", "--channel", "lab", *LOCAL)
    a.wait_log("listening on")
    b = mount("b", "--channel", "lab", *LOCAL)
    wait_until_connected(b, a)

    # the mount: a feed never seen here, listed then read, once each
    feed_id = new_feed(a, "one", 3)
    assert os.listdir(b.path("feeds", feed_id)) == ["queue"]
    assert [json.loads(x) for x in b.path("feeds", feed_id, "queue").read_text().splitlines()] == \
        [{"n": 0}, {"n": 1}, {"n": 2}]
    feed_id = new_feed(a, "two", 2)  # cat straight away, no ls first
    cat = subprocess.run(["cat", str(b.path("feeds", feed_id, "queue"))], capture_output=True, timeout=30)
    assert cat.returncode == 0 and cat.stdout.decode().splitlines() == ['{"n":0}', '{"n":1}'], cat.stderr

    # the CLI
    feed_id = new_feed(a, "three", 2)
    read = cli(b, "feed", "read", feed_id, "queue")
    assert read.returncode == 0 and read.stdout.splitlines() == ['{"n": 0}', '{"n": 1}'], read.stderr

    # Python: a count, then the messages
    for label, call, expected in [("four", "get_num_messages()", 4),
                                  ("five", "get_next_messages()", [{"n": i} for i in range(5)])]:
        feed_id = new_feed(a, label, len(expected) if isinstance(expected, list) else expected)
        code = f"import kacheryfs as kfs, json; print(json.dumps(kfs.load_feed({feed_id!r}).get_subfeed('queue').{call}))"
        result = subprocess.run([sys.executable, "-c", code], env=b.env, capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr.decode()
        assert json.loads(result.stdout) == expected


def test_without_a_daemon_an_unknown_feed_is_an_error_not_silence(cli, tmp_path):
    unknown = "ab" * 32
    for args in (("feed", "read", unknown, "queue"), ("feed", "ls", unknown), ("feed", "read", f"feed://{unknown}/q", "q")):
        result = cli(*args, check=False)
        err = result.stderr.decode()
        assert result.returncode == 1 and result.stdout == b"", err
        assert "not in the local feed store, and no kacheryfs daemon is running" in err and len(err.splitlines()) == 1
    code = f"""
import kacheryfs as kfs
from kacheryfs.errors import UnknownFeed
try:
    kfs.load_feed({unknown!r}).get_subfeed("queue").get_num_messages()
except UnknownFeed as exc:
    print("UnknownFeed")
"""
    result = subprocess.run([sys.executable, "-c", code], env=cli.env, capture_output=True, timeout=60)
    assert result.stdout.decode().strip() == "UnknownFeed", result.stderr.decode()
    # a feed held here still reads without a daemon
    feed_id = cli("feed", "create", "--label", "mine").stdout.decode().strip()
    cli("feed", "append", "mine", "queue", '{"a": 1}')
    assert cli("feed", "read", feed_id, "queue").stdout.decode().splitlines() == ['{"a": 1}']

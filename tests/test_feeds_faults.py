"""Feeds under faults, with real daemons on 127.0.0.1: the owner is killed with SIGKILL during
1,000 appends while a replica follows it live; then the replica goes offline for a while and
must catch up when it returns."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from kacheryfs.feeds import FeedStore, encode_entry, verify_chain

from .mounting import KACHERYFS
from .test_mount_network import LOCAL, wait_until_connected

APPENDER = r'''
import json, sys
from kacheryfs.api.client import call
config_dir, feed_id, start, stop, journal_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
with open(journal_path, "a", buffering=1) as journal:
    for i in range(start, stop):
        try:  # through the daemon only: stop at the first failure
            index = call(config_dir, "feed_append", feed=feed_id, subfeed="log", messages=[{"n": i}])["indices"][0]
        except Exception as exc:
            print("stopped:", exc)
            break
        journal.write(json.dumps({"index": index, "n": i}) + "\n")  # acknowledged
'''


def entries_of(node):
    """What a node's feed store holds (read while the daemon runs, or after it died)."""
    store = FeedStore(node.root / "storage" / "feeds.sqlite3", node.root / "probe-keys")
    try:
        feed_ids = store.feed_ids()
        return {f: store.get_entries(f, "log") for f in feed_ids}
    finally:
        store.close()


def appender(owner, feed_id, start, stop, journal):
    return subprocess.Popen([sys.executable, "-c", APPENDER, owner.env["KACHERY_P2P_CONFIG_DIR"], feed_id,
                             str(start), str(stop), str(journal)], env=owner.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_count(node, feed_id, count, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        got = len(entries_of(node).get(feed_id, []))
        if got >= count:
            return got
        assert time.monotonic() < deadline, f"{node.root.name} has {got} of {count} entries\n{node.read_log()[-3000:]}"
        time.sleep(0.1)


@pytest.mark.timeout(240)
def test_kill9_during_appends_then_replication_and_catch_up(stack, tmp_path):
    _mount, daemon = stack
    a = daemon("a", "daemon", "--channel", "x", *LOCAL)
    b = daemon("b", "daemon", "--channel", "x", *LOCAL)
    a.wait_log("listening on")
    b.wait_log("listening on")
    wait_until_connected(b, a)
    created = subprocess.run([KACHERYFS, "feed", "create", "--label", "jobs"], env=a.env, capture_output=True,
                             text=True, check=True)
    feed_id = created.stdout.strip()
    first = subprocess.run([KACHERYFS, "feed", "append", feed_id, "log", '{"n": -1}'], env=a.env,
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    read = subprocess.run([KACHERYFS, "feed", "read", feed_id, "log"], env=b.env, capture_output=True, text=True)
    assert read.returncode == 0, read.stderr  # B found the feed and follows it now
    wait_count(b, feed_id, 1)

    journal = tmp_path / "acked.jsonl"
    writing = appender(a, feed_id, 0, 1000, journal)
    kill_after = random.Random(3).randrange(200, 800)
    deadline = time.monotonic() + 120
    while not journal.exists() or len(journal.read_text().splitlines()) < kill_after:
        assert writing.poll() is None and time.monotonic() < deadline, writing.stdout.read() if writing.poll() is not None else "slow"
        time.sleep(0.01)
    os.killpg(a.proc.pid, signal.SIGKILL)  # the owner dies mid-way through the appends
    a.proc.wait(timeout=10)
    writing.wait(timeout=60)
    acked = [json.loads(line) for line in journal.read_text().splitlines()]
    assert len(acked) >= kill_after

    owner = entries_of(a)[feed_id]
    verify_chain(owner)
    assert len(owner) >= len(acked) + 1  # every acknowledged append survived SIGKILL
    assert [e.value for e in owner[1:len(acked) + 1]] == [{"n": r["n"]} for r in acked]
    replica = entries_of(b)[feed_id]
    verify_chain(replica)  # every entry signed by the feed key and linked to the one before
    assert 1 <= len(replica) <= len(owner)
    assert [encode_entry(e) for e in replica] == [encode_entry(e) for e in owner[:len(replica)]]  # a prefix
    print(f"killed after {len(acked)} acknowledged appends; owner kept {len(owner)}, replica had {len(replica)}")

    # The replica goes offline; the owner returns and finishes the 1,000; the replica returns and catches up.
    b.stop()
    a.log_path = a.root / "daemon-restarted.log"  # so wait_log sees the new daemon, not the old one
    a.start()
    a.wait_log("listening on")
    writing = appender(a, feed_id, len(acked), 1000, journal)
    out, _ = writing.communicate(timeout=120)
    assert "stopped" not in out, out
    final = entries_of(a)[feed_id]
    assert [e.value for e in final[-3:]] == [{"n": 997}, {"n": 998}, {"n": 999}]
    b.log_path = b.root / "daemon-restarted.log"
    b.start()
    assert wait_count(b, feed_id, len(final)) == len(final)
    replica = entries_of(b)[feed_id]
    verify_chain(replica)
    assert [encode_entry(e) for e in replica] == [encode_entry(e) for e in final]

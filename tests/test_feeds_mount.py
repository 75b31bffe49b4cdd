"""Feeds end to end: real daemons with mounts, the CLI and the Python API."""

import errno
import json
import os
import subprocess
import time

import pytest

from .mounting import KACHERYFS
from .test_mount_network import LOCAL, wait_until_connected


def wait_until(predicate, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def lines_of(path) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return []


@pytest.mark.timeout(180)
def test_feeds_through_mount_cli_and_python(stack, monkeypatch):
    mount, _daemon = stack
    a = mount("a", "--channel", "x", *LOCAL)
    b = mount("b", "--channel", "x", *LOCAL)
    c = mount("c", "--channel", "y", *LOCAL, "--find-timeout", "2")

    def cli(m, *args, **kw):
        return subprocess.run([KACHERYFS, *args], env=m.env, capture_output=True, text=True, timeout=60, **kw)

    created = cli(a, "feed", "create", "--label", "jobs")
    assert created.returncode == 0, created.stderr
    feed_id = created.stdout.strip()
    import kacheryfs as kfs

    for key in ("KACHERY_STORAGE_DIR", "KACHERY_P2P_CONFIG_DIR"):
        monkeypatch.setenv(key, a.env[key])
    jobs = kfs.load_feed("jobs").get_subfeed("jobs")
    assert jobs.append_messages([{"job": i} for i in range(1000)]) == list(range(1000))
    assert jobs.get_uri() == f"feed://{feed_id}/jobs"

    wait_until_connected(b, a)
    # B reads through its mount: the lookup fetches the feed from the channel
    mounted = b.path("feeds", feed_id, "jobs")
    wait_until(lambda: len(lines_of(mounted)) == 1000, what="1,000 messages on B")
    assert [json.loads(x) for x in lines_of(mounted)[:2]] == [{"job": 0}, {"job": 1}]
    assert os.listdir(b.path("feeds", feed_id)) == ["jobs"]
    read = cli(b, "feed", "read", feed_id, "jobs")
    assert read.returncode == 0, read.stderr
    assert len(read.stdout.splitlines()) == 1000
    for key in ("KACHERY_STORAGE_DIR", "KACHERY_P2P_CONFIG_DIR"):
        monkeypatch.setenv(key, b.env[key])
    b_jobs = kfs.load_feed(f"feed://{feed_id}/jobs").get_subfeed("jobs")
    assert b_jobs.get_num_messages() == 1000
    assert b_jobs.get_next_messages()[-1] == {"job": 999}

    # C is in another channel: nothing
    with pytest.raises(OSError) as info:
        os.listdir(c.path("feeds", feed_id))
    assert info.value.errno == errno.ENOENT
    denied = cli(c, "feed", "read", feed_id, "jobs")
    assert denied.returncode == 1 and "not known here nor held by any channel peer" in denied.stderr

    # live: B follows with the CLI and tail -f, A appends
    follow = subprocess.Popen([KACHERYFS, "feed", "read", feed_id, "jobs", "--follow", "--start", "1000"],
                              env=b.env, stdout=subprocess.PIPE, text=True)
    tail = subprocess.Popen(["tail", "-n", "0", "-f", str(mounted)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        latencies = []
        for i in range(5):
            start = time.monotonic()
            cli(a, "feed", "append", feed_id, "jobs", json.dumps({"live": i}))
            line = follow.stdout.readline()
            latencies.append(time.monotonic() - start)
            assert json.loads(line) == {"live": i}
        for i in range(5):
            assert json.loads(tail.stdout.readline()) == {"live": i}
    finally:
        follow.kill()
        tail.kill()

    # appending through the mount: owner only, JSON lines only, appends only
    with pytest.raises(OSError) as info:
        with open(b.path("feeds", feed_id, "jobs"), "a") as f:
            f.write('{"from": "b"}\n')
    assert info.value.errno == errno.EACCES
    owned = a.path("feeds", feed_id, "jobs")
    with pytest.raises(OSError) as info:
        with open(owned, "a") as f:
            f.write("not json\n")
    assert info.value.errno == errno.EINVAL
    with open(owned, "a") as f:
        f.write('{"via": "mount"}\n')
    assert json.loads(lines_of(owned)[-1]) == {"via": "mount"}
    assert len(lines_of(owned)) == 1006
    with pytest.raises(OSError):
        os.truncate(owned, 0)
    with open(a.path("feeds", feed_id, "results"), "a") as f:  # a new subfeed
        f.write('{"r": 1}\n')
    assert sorted(os.listdir(a.path("feeds", feed_id))) == ["jobs", "results"]

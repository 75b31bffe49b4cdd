"""FeedStore: appends, replication from foreign copies, labels, key files, and crash safety."""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kacheryfs.crypto import FeedKey
from kacheryfs.errors import (
    BadFeedSignature,
    FeedFork,
    FeedGap,
    FeedLabelTaken,
    FeedNotOwned,
    InvalidFeedId,
    InvalidFeedLabel,
    InvalidFeedMessage,
    InvalidSubfeedName,
    NotPermitted,
)
from kacheryfs.feeds.entry import (
    ZERO_HASH,
    FeedEntry,
    entry_hash,
    make_entry,
    signable_bytes,
    verify_chain,
)
from kacheryfs.feeds.store import FeedStore


def open_store(root: Path, name: str = "a") -> FeedStore:
    return FeedStore(root / name / "feeds.sqlite3", root / name / "config" / "feeds")


@pytest.fixture
def stores(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = open_store(tmp_path, "a"), open_store(tmp_path, "b")
    yield a, b
    a.close()
    b.close()


def assert_log(store: FeedStore, feed_id: str, subfeed: str, values: list) -> None:
    entries = store.get_entries(feed_id, subfeed)
    assert [e.value for e in entries] == values
    assert verify_chain(entries) == store.tip(feed_id, subfeed)[1]
    assert store.num_messages(feed_id, subfeed) == len(values)


# ---- owning and appending --------------------------------------------------------------------
def test_append_and_read(stores):
    a, _ = stores
    f = a.create_feed()
    assert a.owns(f) and a.feed_ids() == [f]
    assert a.tip(f, "jobs") == (0, ZERO_HASH) and a.get_entries(f, "jobs") == []
    assert a.append(f, "jobs", [{"n": 1}, "two", [3]]) == [0, 1, 2]
    assert a.append(f, "jobs", [4]) == [3]
    assert a.append(f, "jobs", []) == []
    assert a.append(f, "log", [None]) == [0]
    assert_log(a, f, "jobs", [{"n": 1}, "two", [3], 4])
    assert a.subfeeds(f) == ["jobs", "log"] and a.subfeeds("0" * 64) == []
    assert [e.index for e in a.get_entries(f, "jobs", start=1, limit=2)] == [1, 2]
    assert a.get_entries(f, "jobs", start=4) == []
    assert a.tip(f, "jobs") == (4, entry_hash(a.get_entries(f, "jobs")[-1]))
    e = a.get_entries(f, "jobs")[0]
    assert e.feed_id == f and e.subfeed == "jobs" and abs(e.timestamp_ms - time.time() * 1000) < 60_000


def test_append_is_all_or_nothing(stores):
    a, _ = stores
    f = a.create_feed()
    a.append(f, "jobs", [1])
    with pytest.raises(InvalidFeedMessage):
        a.append(f, "jobs", [2, object(), 3])
    with pytest.raises(InvalidFeedMessage):
        a.append(f, "jobs", [2, "x" * (1 << 20)])
    with pytest.raises(InvalidSubfeedName):
        a.append(f, "a/b", [1])
    assert_log(a, f, "jobs", [1])


def test_only_the_owner_can_append(stores):
    a, b = stores
    f = a.create_feed()
    a.append(f, "jobs", [1, 2])
    assert b.add_entries(a.get_entries(f, "jobs")) == 2
    assert not b.owns(f)
    with pytest.raises(FeedNotOwned) as info:
        b.append(f, "jobs", [3])
    assert info.value.errno == errno.EACCES and isinstance(info.value, NotPermitted)
    with pytest.raises(FeedNotOwned):
        b.append("ab" * 32, "jobs", [1])
    with pytest.raises(InvalidFeedId):
        b.append("../../etc/passwd", "jobs", [1])
    assert not b.owns("../x")
    assert_log(b, f, "jobs", [1, 2])


def test_key_files_and_reopen(tmp_path):
    store = open_store(tmp_path)
    f = store.create_feed("mine")
    store.append(f, "jobs", ["x"])
    store.close()
    key_dir = tmp_path / "a" / "config" / "feeds"
    key_file = key_dir / f"{f}.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert FeedKey.load(key_file).feed_id == f
    with open_store(tmp_path) as again:
        assert again.owns(f) and again.label_of(f) == "mine"
        assert again.append(f, "jobs", ["y"]) == [1]
        assert_log(again, f, "jobs", ["x", "y"])
    # The key file, not the database, is what makes a feed ours: a lost database finds it again.
    for p in (tmp_path / "a").glob("feeds.sqlite3*"):
        p.unlink()
    with open_store(tmp_path) as fresh:
        assert fresh.feed_ids() == [f] and fresh.owns(f)
        assert fresh.append(f, "jobs", ["new"]) == [0]


def test_labels(stores):
    a, _ = stores
    f = a.create_feed("jobs")
    g = a.create_feed()
    assert a.label_of(f) == "jobs" and a.label_of(g) is None and a.find_by_label("jobs") == f
    assert a.find_by_label("none") is None and a.label_of("cd" * 32) is None
    with pytest.raises(FeedLabelTaken):
        a.create_feed("jobs")
    with pytest.raises(FeedLabelTaken):
        a.set_label(g, "jobs")
    a.set_label(f, "jobs")  # same feed, same label: fine
    a.set_label(f, None)
    a.set_label(g, "jobs")
    assert a.find_by_label("jobs") == g and a.label_of(f) is None
    followed = FeedKey.generate().feed_id
    a.add_feed(followed, "theirs")
    a.add_feed(followed)
    assert a.find_by_label("theirs") == followed and not a.owns(followed)
    assert sorted(a.feed_ids()) == sorted([f, g, followed])
    for bad in ("", "a/b", ".", "..", "x\0", "ab" * 32, "é" * 200):
        with pytest.raises(InvalidFeedLabel):
            a.create_feed(bad)
    assert len(a.feed_ids()) == 3


def test_concurrent_appends_from_threads(stores):
    a, _ = stores
    f = a.create_feed()
    got: list[int] = []

    def worker(t: int) -> None:
        for i in range(25):
            got.extend(a.append(f, "jobs", [{"t": t, "i": i}]))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(100))
    entries = a.get_entries(f, "jobs")
    verify_chain(entries)
    for t in range(4):  # each thread's messages kept their order
        assert [e.value["i"] for e in entries if e.value["t"] == t] == list(range(25))


# ---- replication: add_entries ----------------------------------------------------------------
def honest(a: FeedStore, n: int = 8) -> tuple[str, list[FeedEntry]]:
    f = a.create_feed()
    a.append(f, "jobs", [{"i": i} for i in range(n)])
    return f, a.get_entries(f, "jobs")


def test_add_entries_accepts_an_honest_chain_in_pieces(stores):
    a, b = stores
    f, log = honest(a)
    assert b.add_entries(log[:3]) == 3
    assert b.add_entries(log[:3]) == 0  # already held
    assert b.add_entries(log[1:6]) == 3  # overlap: only the new ones
    assert b.add_entries(log) == 2
    assert b.get_entries(f, "jobs") == log and b.feed_ids() == [f]
    assert_log(b, f, "jobs", [{"i": i} for i in range(8)])
    # Entries of several subfeeds and feeds in one call.
    a.append(f, "other", [1])
    g, log_g = honest(a, 2)
    assert b.add_entries([log_g[0], a.get_entries(f, "other")[0], log_g[1]]) == 3
    assert b.subfeeds(f) == ["jobs", "other"] and sorted(b.feed_ids()) == sorted([f, g])


def expect_rejected(b: FeedStore, entries: list[FeedEntry], error: type, added: int) -> None:
    with pytest.raises(error) as info:
        b.add_entries(entries)
    assert info.value.added == added


def test_add_entries_rejects_bad_entries_and_keeps_the_honest_log(stores):
    a, b = stores
    f, log = honest(a)
    b.add_entries(log[:3])
    forged = dataclasses.replace(log[3], message=b'{"i":"forged"}')
    expect_rejected(b, [forged], BadFeedSignature, 0)
    resigned = dataclasses.replace(log[3], signature=bytes(64))
    expect_rejected(b, [resigned], BadFeedSignature, 0)
    expect_rejected(b, [log[4], log[3]], FeedGap, 0)  # reordered: 4 arrives before 3
    expect_rejected(b, [log[5]], FeedGap, 0)
    # Signed by someone else while claiming to be f.
    intruder = FeedKey.generate()
    sig = intruder.sign(signable_bytes(f, "jobs", 3, entry_hash(log[2]), 0, b'"mine"'))
    expect_rejected(b, [FeedEntry(f, "jobs", 3, entry_hash(log[2]), 0, b'"mine"', sig)], BadFeedSignature, 0)
    assert b.get_entries(f, "jobs") == log[:3]
    # The valid prefix is kept, then the bad entry stops the batch.
    expect_rejected(b, [log[3], log[4], dataclasses.replace(log[5], message=b"5"), log[6]], BadFeedSignature, 2)
    assert b.get_entries(f, "jobs") == log[:5]
    expect_rejected(b, [log[5], log[7]], FeedGap, 1)
    expect_rejected(b, [log[7], log[6]], FeedGap, 0)  # reordered at the tip
    assert b.add_entries(log) == 2
    assert b.get_entries(f, "jobs") == log
    assert_log(b, f, "jobs", [{"i": i} for i in range(8)])


def test_add_entries_rejects_forks(stores, tmp_path):
    a, b = stores
    f, log = honest(a, 4)
    b.add_entries(log)
    # Only the key's owner can fork; simulate a second copy of the key signing another history.
    key = FeedKey.load(tmp_path / "a" / "config" / "feeds" / f"{f}.key")
    alt2 = make_entry(key, "jobs", 2, entry_hash(log[1]), "alternative", 0)
    alt3 = make_entry(key, "jobs", 3, entry_hash(alt2), "alternative", 0)
    alt4 = make_entry(key, "jobs", 4, entry_hash(alt3), "alternative", 0)
    expect_rejected(b, [alt2], FeedFork, 0)  # conflicts with the held entry 2
    expect_rejected(b, [alt4], FeedFork, 0)  # extends a history that is not ours
    stray = make_entry(key, "jobs", 4, b"\x01" * 32, "stray", 0)  # right index, wrong predecessor
    expect_rejected(b, [stray], FeedFork, 0)
    assert b.get_entries(f, "jobs") == log
    verify_chain(b.get_entries(f, "jobs"))


# ---- crash safety ----------------------------------------------------------------------------
CHILD = r"""
import sys
from kacheryfs.feeds.store import FeedStore
store = FeedStore(sys.argv[1], sys.argv[2])
feed = sys.argv[3]
batch = 0
while True:
    size = batch % 3 + 1  # batches of 1, 2 and 3 messages: each must land whole or not at all
    indices = store.append(feed, "log", [{"batch": batch, "n": j, "of": size, "pad": "x" * 200} for j in range(size)])
    for i in indices:
        sys.stdout.write(f"{i}\n")
    sys.stdout.flush()
    batch += 1
"""


def test_kill_9_during_appends_loses_no_acknowledged_entry(tmp_path):
    db, keys = tmp_path / "feeds.sqlite3", tmp_path / "config" / "feeds"
    with FeedStore(db, keys) as store:
        feed = store.create_feed()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(keys), feed],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent)
    acked: list[int] = []
    deadline = time.monotonic() + 120
    try:
        assert proc.stdout is not None
        while len(acked) < 200:
            line = proc.stdout.readline()
            assert line, f"child exited early: {proc.stderr.read().decode() if proc.stderr else ''}"
            acked.append(int(line))
            assert time.monotonic() < deadline
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()  # lines written before the kill were acknowledged too
        acked += [int(x) for x in rest.split()]
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert acked == list(range(len(acked)))
    with FeedStore(db, keys) as store:
        entries = store.get_entries(feed, "log")
        verify_chain(entries)
        held = [e.index for e in entries]
        assert set(acked) <= set(held)
        assert held == list(range(len(held)))
        # At most the one batch in flight at the kill may be present without its ack, and only whole.
        batches: dict[int, list[dict]] = {}
        for e in entries:
            batches.setdefault(e.value["batch"], []).append(e.value)
        for msgs in batches.values():
            assert [m["n"] for m in msgs] == list(range(msgs[0]["of"]))
        assert len(held) - len(acked) <= 3
        # The log goes on where it stopped.
        assert store.append(feed, "log", ["after"]) == [len(held)]
        verify_chain(store.get_entries(feed, "log"))

"""The store's index behind LocalStore: feeds' channels in their own table (and the migration of
index files that kept them as fake objects), reads that never wait for a blocked write, and a
mount that keeps serving while another process holds the SQLite write lock."""

import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from kacheryfs.store import LocalStore
from kacheryfs.store.local import INDEX_FILE

from .conftest import random_bytes

FEED = "f" * 64
CHANNEL_A, CHANNEL_B = "a" * 32, "b" * 32


def test_feed_channels_have_their_own_table(store):
    obj = store.put_bytes(b"cached", pinned=False)
    store.add_channels(obj.sha1, {CHANNEL_A})
    store.add_feed_channels(FEED, {CHANNEL_B})
    assert store.channels_of(obj.sha1) == {CHANNEL_A}
    assert store.feed_channels_of(FEED) == {CHANNEL_B}
    assert store.channels_of(f"feed:{FEED}") == frozenset()  # no fake object rows any more


def test_old_index_files_are_migrated(tmp_path):
    root = tmp_path / "storage"
    root.mkdir()
    old = sqlite3.connect(root / INDEX_FILE)  # as written before feed_channels existed
    old.executescript(f"""
        CREATE TABLE object_channels (sha1 TEXT NOT NULL, channel_id TEXT NOT NULL, PRIMARY KEY (sha1, channel_id));
        INSERT INTO object_channels VALUES ('feed:{FEED}', '{CHANNEL_A}'), ('feed:{FEED}', '{CHANNEL_B}'),
                                           ('{"1" * 40}', '{CHANNEL_A}');
    """)
    old.commit()
    old.close()
    for _ in range(2):  # and opening it again changes nothing
        store = LocalStore(root)
        assert store.feed_channels_of(FEED) == {CHANNEL_A, CHANNEL_B}
        assert store.channels_of("1" * 40) == {CHANNEL_A}
        assert store.channels_of(f"feed:{FEED}") == frozenset()
        store.close()
    check = sqlite3.connect(root / INDEX_FILE)
    assert check.execute("PRAGMA user_version").fetchone()[0] == 1
    assert check.execute("SELECT count(*) FROM object_channels WHERE sha1 LIKE 'feed:%'").fetchone()[0] == 0
    check.close()


def test_reads_do_not_wait_for_a_write_blocked_by_another_process(store):
    obj = store.put_bytes(b"held here")
    other = sqlite3.connect(store.root / INDEX_FILE, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writing: our writes wait for it
    blocked = threading.Thread(target=store.add_channels, args=(obj.sha1, {CHANNEL_A}))
    try:
        blocked.start()
        deadline = time.monotonic() + 10
        while not store.index._lock.locked() and time.monotonic() < deadline:
            time.sleep(0.005)  # until the write holds the write connection, waiting on SQLite
        assert blocked.is_alive()
        # with one connection these would wait for that write (30 s, then "database is locked")
        assert store.info(obj.sha1).size == len(b"held here")
        assert [r.sha1 for r in store.list_objects()] == [obj.sha1]
        assert store.channels_of(obj.sha1) == frozenset()
        store.touch(obj.sha1)  # kept in memory: never waits either
        assert blocked.is_alive()  # the write is still waiting, so nothing above waited for it
    finally:
        other.execute("ROLLBACK")
        other.close()
        blocked.join(30)
    assert store.channels_of(obj.sha1) == {CHANNEL_A}


CLOSER = """
import sys
f = open(sys.argv[1], "wb")
f.write(bytes.fromhex(sys.argv[2]))
print("closing", flush=True)
f.close()
print("closed", flush=True)
"""


@pytest.mark.timeout(120)
def test_a_writer_holding_the_index_lock_does_not_stall_the_mount(mount):
    held = random_bytes(300_000, seed=31)
    mount.path("store", "held.bin").write_bytes(held)
    held_sha1 = hashlib.sha1(held).hexdigest()
    new = random_bytes(1000, seed=32)
    new_sha1 = hashlib.sha1(new).hexdigest()
    other = sqlite3.connect(mount.storage / INDEX_FILE, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a CLI writer in the middle of its transaction
    writer = subprocess.Popen([sys.executable, "-c", CLOSER, str(mount.path("store", "new.bin")), new.hex()],
                              stdout=subprocess.PIPE)
    try:
        assert writer.stdout.readline() == b"closing\n"
        # the commit renames the object into place, then waits to index it
        placed = mount.storage / "sha1" / new_sha1[0:2] / new_sha1[2:4] / new_sha1[4:6] / new_sha1
        deadline = time.monotonic() + 30
        while not placed.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert placed.exists(), mount.read_log()
        # meanwhile the mount serves: a lookup, a read, listings
        assert os.stat(mount.path("sha1", held_sha1)).st_size == len(held)
        assert mount.path("sha1", held_sha1).read_bytes() == held
        assert held_sha1 in os.listdir(mount.path("sha1"))
        assert "held.bin" in os.listdir(mount.path("store"))
        assert writer.poll() is None  # while the commit still waits for the lock
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert writer.stdout.readline() == b"closed\n"
    assert writer.wait(timeout=30) == 0
    assert mount.path("store", "new.bin").read_bytes() == new
    assert mount.path("sha1", new_sha1).read_bytes() == new

"""kill -9 of a mounted daemon while 8 writers store files, then a restart: 3 cycles. A file whose
close() returned must be there with the right content after every restart; no object may be torn;
temp files must not pile up. Writers run in their own process (never this one's threads)."""

import hashlib
import json
import os
import random
import subprocess
import sys
import time

import pytest

from .test_bitrot import assert_store_consistent, cli

WRITERS = r'''
import hashlib, json, os, random, sys, threading
mnt, cycle, journal_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
journal = open(journal_path, "a", buffering=1)
lock = threading.Lock()

def writer(t):
    for i in range(100):
        name = f"c{cycle}-t{t}-{i}.bin"
        rng = random.Random(name)
        size = rng.choice([0, 1, 4096, rng.randrange(1, 3 << 20)])
        data = rng.randbytes(size)
        try:
            with open(os.path.join(mnt, "store", name), "wb") as f:
                for start in range(0, len(data), 1 << 20):
                    f.write(data[start:start + (1 << 20)])
        except OSError:
            return  # the daemon died under us: this file's close() did not return
        with lock:  # close() returned: the file must survive
            journal.write(json.dumps({"name": name, "sha1": hashlib.sha1(data).hexdigest()}) + "\n")

threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
for th in threads: th.start()
for th in threads: th.join()
'''


def debris(storage) -> int:
    tmp = storage / "tmp"
    return len(os.listdir(tmp)) if tmp.exists() else 0


@pytest.mark.timeout(240)
def test_kill9_while_8_writers_store_3_cycles(make_mount, tmp_path):
    m = make_mount()
    journal = tmp_path / "closed.jsonl"
    rng = random.Random(7)
    m.start()
    for cycle in range(3):
        writers = subprocess.Popen([sys.executable, "-c", WRITERS, str(m.mountpoint), str(cycle), str(journal)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            time.sleep(rng.uniform(0.5, 3.0))  # a random moment mid-way through the writes
            m.kill9()
            writers.wait(timeout=60)
        finally:
            if writers.poll() is None:
                writers.kill()
                writers.wait()
        m.start()  # cleans up the stale mount, removes dead writers' temp files, reconciles the index
        assert debris(m.storage) == 0, os.listdir(m.storage / "tmp")
        closed = [json.loads(line) for line in journal.read_text().splitlines()]
        assert closed, "no write completed before the kill"
        for entry in closed:  # every file whose close() returned, from this cycle and the ones before
            path = m.path("store", entry["name"])
            assert path.exists(), f"{entry['name']} was closed but is gone after kill -9 (cycle {cycle})"
            assert hashlib.sha1(path.read_bytes()).hexdigest() == entry["sha1"], entry["name"]
        print(f"cycle {cycle}: {len(closed)} files closed so far, all present")
    assert_store_consistent(m.storage)
    checked = cli(m, "verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr

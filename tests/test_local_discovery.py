"""Same-machine discovery through a shared directory (net/local_discovery.py): entries, their
refresh and expiry, and the scan cache (an unchanged entry is not parsed again)."""

from __future__ import annotations

import json
import os
import time

from kacheryfs.net import local_discovery as ld


def test_scan_sees_entries_of_its_channels_and_rereads_only_changed_ones(tmp_path):
    ld.publish(tmp_path, ["chan"], "a", ["127.0.0.1:1"])
    ld.publish(tmp_path, ["chan"], "b", ["127.0.0.1:2"])
    ld.publish(tmp_path, ["other"], "c", ["127.0.0.1:3"])
    cache: dict = {}
    found = ld.scan(tmp_path, ["chan"], "a", cache)
    assert found == [{"node": "b", "addrs": ["127.0.0.1:2"]}]  # not itself, not another channel
    assert list(cache) == ["chan.b.json"]
    # an unchanged file is not read again: its parsed entry comes from the cache
    entry = tmp_path / "chan.b.json"
    version = cache["chan.b.json"][0]
    cache["chan.b.json"] = (version, {"node": "b", "addrs": ["from the cache"], "time": time.time()})
    assert ld.scan(tmp_path, ["chan"], "a", cache)[0]["addrs"] == ["from the cache"]
    ld.publish(tmp_path, ["chan"], "b", ["127.0.0.1:22"])  # re-published (a new file): read again
    assert ld.scan(tmp_path, ["chan"], "a", cache) == [{"node": "b", "addrs": ["127.0.0.1:22"]}]
    ld.withdraw(tmp_path, ["chan"], "b")
    assert ld.scan(tmp_path, ["chan"], "a", cache) == [] and cache == {}


def test_stale_and_garbled_entries_are_skipped(tmp_path):
    stale = {"node": "s", "addrs": ["127.0.0.1:4"], "pid": 1, "time": time.time() - ld.ENTRY_TTL - 1}
    (tmp_path / "chan.s.json").write_text(json.dumps(stale))
    (tmp_path / "chan.g.json").write_text("[not an entry")
    (tmp_path / "chan.l.json").write_text("[1, 2]")
    (tmp_path / "chan.x.json").write_text(json.dumps({"node": "someone else", "addrs": [], "time": time.time()}))
    cache: dict = {}
    assert ld.scan(tmp_path, ["chan"], "a", cache) == []
    assert not (tmp_path / "chan.s.json").exists()  # expired: removed
    assert (tmp_path / "chan.g.json").exists()
    assert ld.REFRESH_SECONDS < ld.ENTRY_TTL / 2  # a live node's entry never expires between refreshes
    os.unlink(tmp_path / "chan.g.json")

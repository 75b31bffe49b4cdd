"""Who can get at a node's data: peers outside its channel, peers with the wrong private-channel
secret, and other users of the same machine (a throwaway user this test creates and removes).
A real mounted daemon on 127.0.0.1; the rogue peers run in this process and dial it directly."""

import errno
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import trio

from kacheryfs.crypto import NodeKey, channel_id, channel_key
from kacheryfs.net.fetcher import NetworkFetcher
from kacheryfs.net.node import Node
from kacheryfs.protocol.messages import ChunkRequest, FindRequest
from kacheryfs.store import LocalStore

from .mounting import Mount
from .procstat import listen_port, node_status

PROBE = r'''
import errno, json, os, socket, sys
config, storage, mnt, obj = sys.argv[1:5]
out = {}
def attempt(what, fn):
    try:
        fn()
        out[what] = 0
    except OSError as exc:
        out[what] = exc.errno
attempt("node key", lambda: open(os.path.join(config, "node-key.ed25519")).read())
attempt("config dir", lambda: os.listdir(config))
attempt("storage dir", lambda: os.listdir(storage))
attempt("object file", lambda: open(obj, "rb").read())
attempt("index", lambda: open(os.path.join(storage, "kacheryfs-index.sqlite3"), "rb").read())
attempt("mount", lambda: os.listdir(mnt))
def api():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(os.path.join(config, "api.sock"))
    s.sendall(b'{"op": "status"}\n')
    if not s.recv(100):
        raise OSError(errno.ECONNRESET, "closed")
attempt("api socket", api)
print(json.dumps(out))
'''


@pytest.fixture
def throwaway_user():
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("creating a user needs root and useradd")
    name = f"kfs{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def open_base():
    """A directory every user can traverse (pytest's tmp dirs are 0700): only kacheryfs's own
    modes then stand between the other user and the node's files."""
    base = Path(tempfile.mkdtemp(prefix="kfs-access-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(120)
async def test_outsiders_and_other_local_users_get_nothing(throwaway_user, open_base):
    secret = open_base / "lab.secret"
    secret.write_text("s3cret lab key\n")
    os.chmod(secret, 0o600)
    (open_base / "a").mkdir()
    a = Mount(open_base / "a")
    try:
        a.start("--channel", "lab", "--channel-secret-file", str(secret), "--listen", "127.0.0.1:0")
        data = os.urandom(3 << 20)
        a.path("store", "private.bin").write_bytes(data)
        sha1 = hashlib.sha1(data).hexdigest()
        port = listen_port(a.read_log())

        # modes kacheryfs chose for what it created
        assert os.stat(a.storage).st_mode & 0o777 == 0o700
        assert os.stat(a.config).st_mode & 0o777 == 0o700
        assert os.stat(a.config / "node-key.ed25519").st_mode & 0o777 == 0o600
        assert os.stat(a.config / "api.sock").st_mode & 0o777 == 0o600

        # another local user: nothing of the node is reachable
        obj = a.storage / "sha1" / sha1[:2] / sha1[2:4] / sha1[4:6] / sha1
        probe = await trio.to_thread.run_sync(lambda: subprocess.run(
            ["/usr/bin/python3", "-c", PROBE, str(a.config), str(a.storage), str(a.mountpoint), str(obj)],
            user=throwaway_user, group="nogroup", extra_groups=[], capture_output=True, text=True, timeout=30,
            cwd="/"))
        assert probe.returncode == 0, probe.stderr
        results = json.loads(probe.stdout)
        assert results == {what: errno.EACCES for what in results}, results

        # peers: in another channel, in the channel without its secret, and (control) with it
        async with trio.open_nursery() as nursery:
            nodes = {}
            for name, keys in (("other", ["elsewhere"]), ("wrong", [("lab", b"guessed")]),
                               ("member", [("lab", b"s3cret lab key")])):
                chans = {}
                for k in keys:
                    ck = channel_key(*k) if isinstance(k, tuple) else channel_key(k)
                    chans[channel_id(ck)] = ck
                store = LocalStore(open_base / name)
                node = Node(NodeKey.generate(), store, chans, listen=None, find_timeout=2.0)
                await nursery.start(node.run)
                nodes[name] = node
            for name in ("other", "wrong"):
                node = nodes[name]
                session = await node.connect("127.0.0.1", port)
                reply = await session.request(FindRequest(req=session.next_req(), sha1=sha1), 5)
                assert reply.found is False
                with pytest.raises(Exception, match="not-found"):
                    await session.request(ChunkRequest(req=session.next_req(), sha1=sha1, offset=0,
                                                       length=1 << 20), 5)
                assert await NetworkFetcher(node).locate(sha1) is None
            member = nodes["member"]
            await member.connect("127.0.0.1", port)
            await NetworkFetcher(member).fetch(sha1)
            assert member.store.read_bytes(sha1) == data
            stats = await trio.to_thread.run_sync(node_status, a.mountpoint)
            for name in ("other", "wrong"):
                assert stats["served_bytes"].get(nodes[name].node_id, 0) == 0
            assert stats["served_bytes"][member.node_id] >= len(data)
            for node in nodes.values():
                node.cancel()
                node.store.close()
    finally:
        a.stop()

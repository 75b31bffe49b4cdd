"""What a new user types wrong, and the one line they get back (exit 1, no traceback, nothing lost):
listen and bootstrap addresses, a port that is taken (by another program, or by another kacheryfs
daemon of the same user, which SO_REUSEPORT would have let in silently), the default port taken,
unmount of what is not mounted, and -v/-vv reaching the mount and the daemon."""

from __future__ import annotations

import socket
import subprocess

import pytest
import trio

from kacheryfs.config import DEFAULT_LISTEN, DEFAULT_LISTEN_PORT, Config, ConfigError
from kacheryfs.crypto import NodeKey
from kacheryfs.errors import ListenError
from kacheryfs.net.host import SessionHost

from .mounting import KACHERYFS, Daemon, fuse_mounted


def one_line_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "Traceback" not in err and "Exception Group" not in err and len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


def test_listen_and_bootstrap_addresses_are_checked_not_wrapped():
    default = Config.from_env(environ={})
    assert default.listen == DEFAULT_LISTEN == f"0.0.0.0:{DEFAULT_LISTEN_PORT}" and default.listen_fallback
    explicit = Config.from_env(listen="127.0.0.1:7000", environ={})
    assert explicit.listen == "127.0.0.1:7000" and not explicit.listen_fallback
    assert Config.from_env(listen="NONE", environ={}).listen is None
    from_env = Config.from_env(environ={"KACHERYFS_LISTEN": "127.0.0.1:0"})  # what the tests use
    assert from_env.listen == "127.0.0.1:0" and not from_env.listen_fallback
    assert Config.from_env(listen="[::1]:7000", environ={"KACHERYFS_LISTEN": "127.0.0.1:0"}).listen == "[::1]:7000"
    with pytest.raises(ConfigError, match="KACHERYFS_LISTEN"):
        Config.from_env(environ={"KACHERYFS_LISTEN": "127.0.0.1:http"})
    assert Config.from_env(listen="[::1]:0", environ={}).listen == "[::1]:0"
    for bad in ("127.0.0.1:99999", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1", "127.0.0.1:http", ""):
        with pytest.raises(ConfigError, match="--listen"):
            Config.from_env(listen=bad, environ={})
    for bad in ("boot.example.org:0", "boot.example.org:70000", "boot.example.org"):
        with pytest.raises(ConfigError, match="--bootstrap"):
            Config.from_env(bootstraps=[bad], environ={})


@pytest.mark.parametrize("args,message", [
    (("daemon", "--listen", "127.0.0.1:99999"), "--listen '127.0.0.1:99999': the port must be 0 to 65535"),
    (("daemon", "--listen", "127.0.0.1:99999", "--bootstrap", "127.0.0.1:1"), "the port must be 0 to 65535"),
    (("daemon", "--bootstrap", "127.0.0.1:70000"), "--bootstrap '127.0.0.1:70000': the port must be 1 to 65535"),
    (("bootstrap", "--listen", "127.0.0.1:99999"), "the port must be 0 to 65535"),
    (("unmount", "/tmp"), "Could not unmount: /tmp is not mounted"),
    (("store", "-x"), "No such option"),
    (("bootstrap", "--listen", "127.0.0.1:0", "--storage", "/tmp"), "No such option '--storage'"),  # it stores nothing
])
def test_bad_input_is_one_line(cli, args, message):
    err = one_line_error(cli(*args, check=False), message)
    assert "Could not mount" not in err


def test_mount_with_a_bad_port_mounts_nothing(cli, tmp_path):
    mnt = tmp_path / "mnt"
    one_line_error(cli("mount", str(mnt), "--listen", "127.0.0.1:99999", check=False), "the port must be 0 to 65535")
    assert not fuse_mounted(mnt)


def test_a_taken_port_is_one_line(cli):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_line_error(cli("daemon", "--listen", f"127.0.0.1:{port}", check=False),
                       f"Cannot listen for peers: 127.0.0.1:{port}: Address already in use", "--listen HOST:PORT")


@pytest.mark.timeout(60)
def test_a_second_daemon_of_the_same_user_cannot_share_the_port(stack, tmp_path):
    """SO_REUSEPORT (for hole punching from the listening port) lets sockets of one user bind a
    port together: a second daemon used to start on the first one's port and take half its peers."""
    _mount, daemon = stack
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    first = daemon("first", "daemon", "--listen", f"127.0.0.1:{port}")
    first.wait_log("listening on")
    second = Daemon(tmp_path / "second")
    result = subprocess.run([KACHERYFS, "daemon", "--listen", f"127.0.0.1:{port}"], env=second.env,
                            capture_output=True, timeout=30)
    one_line_error(result, "Address already in use", "another kacheryfs daemon")
    assert first.proc.poll() is None


async def test_the_default_port_falls_back_to_a_free_one_when_taken(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        host = SessionHost(NodeKey.generate(), {}, listen=("127.0.0.1", port), listen_fallback=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            bound = int(host.listen_addrs[0].rpartition(":")[2])
            assert bound != port and bound > 0
            nursery.cancel_scope.cancel()
        assert f"port {port} is taken" in caplog.text
        strict = SessionHost(NodeKey.generate(), {}, listen=("127.0.0.1", port))
        with pytest.raises(BaseExceptionGroup) as info:  # raised through the host's nursery
            async with trio.open_nursery() as nursery:
                await nursery.start(strict.run)
        assert info.group_contains(ListenError, match="Address already in use")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [("-v", "daemon"), ("daemon", "-vv"), ("daemon",)])
def test_verbose_reaches_the_daemon_before_or_after_the_command(tmp_path, args):
    d = Daemon(tmp_path / "d", *args, "--listen", "127.0.0.1:0")
    try:
        d.start()
        d.wait_log("listening on")  # a node logs what it does by default
        debug = "DEBUG kacheryfs.daemon: starting with Config(" in d.read_log()
        assert debug == ("-v" in args or "-vv" in args), d.read_log()
    finally:
        d.stop()


@pytest.mark.timeout(60)
def test_verbose_reaches_the_mount(make_mount):
    m = make_mount()
    m.start("-v", "--listen", "127.0.0.1:0")
    assert "DEBUG kacheryfs.daemon: starting with Config(" in m.read_log()
    m.stop()
    (m.root / "quiet").mkdir()
    quiet = make_mount(root=m.root / "quiet")
    quiet.start("--listen", "127.0.0.1:0")
    assert "DEBUG" not in quiet.read_log() and "mounted" in quiet.read_log()

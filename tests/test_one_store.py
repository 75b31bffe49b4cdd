"""One store for the mount, the CLI and Python: a new user mounts with --storage (or --config-dir)
and then runs plain `kacheryfs store` / `kfs.store_text(...)` with no flags; what they store must
land in the mount's store, so colleagues can fetch it. A store that differs from the running
daemon's is a one-line warning. The "user" has a fresh HOME and no KACHERY_* variables; real
mounts and daemons over 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from kacheryfs.running import locate

from .mounting import KACHERYFS, Mount
from .test_mount_network import LOCAL, wait_until_connected

USER_VARS = ("KACHERY_STORAGE_DIR", "KACHERY_P2P_CONFIG_DIR", "KACHERYFS_RUNTIME_DIR", "XDG_RUNTIME_DIR",
             "KACHERY_P2P_API_PORT")


def user_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in USER_VARS}
    env["HOME"] = str(tmp_path / "home")
    env["KACHERYFS_DISCOVERY_DIR"] = str(tmp_path / "discovery")  # this test's nodes only
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


class UserMount(Mount):
    """A mount started as the user starts it: flags only, no KACHERY_* variables."""

    def __init__(self, root, env, config):
        super().__init__(root)
        self._env = env
        self.config = config  # where it registers (Mount.start waits for that)

    @property
    def env(self):
        return self._env


def kfs(env, *args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([KACHERYFS, *args], env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def python(env, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mount_flags", ["storage", "storage+config"])
def test_plain_commands_and_python_use_the_mounts_store(tmp_path, stack, mount_flags):
    _mount, daemon = stack
    env = user_env(tmp_path)
    storage, config = tmp_path / "mystore", tmp_path / "myconfig"
    flags = ["--storage", str(storage)] + (["--config-dir", str(config)] if "config" in mount_flags else [])
    (tmp_path / "a").mkdir()
    a = UserMount(tmp_path / "a", env, config if "config" in mount_flags else tmp_path / "home" / ".kachery-p2p")
    try:
        a.start(*flags, "--channel", "lab", *LOCAL)
        (tmp_path / "data.txt").write_text("results\n")
        stored = kfs(env, "store", str(tmp_path / "data.txt"))
        assert stored.stderr == ""  # found, not warned about
        uri = stored.stdout.strip()
        py = python(env, "import kacheryfs as kfs, warnings; warnings.simplefilter('error'); "
                         "print(kfs.store_text('from python'))")
        assert py.returncode == 0, py.stderr
        py_uri = py.stdout.strip()
        for u in (uri, py_uri):  # both in the mount's store, none in the default one
            sha1 = u[7:47]
            assert (storage / "sha1" / sha1[:2] / sha1[2:4] / sha1[4:6] / sha1).exists()
            assert a.path("sha1", sha1).exists()
        assert not (tmp_path / "home" / "kachery-storage" / "sha1").exists() or \
            not any((tmp_path / "home" / "kachery-storage" / "sha1").rglob("*"))
        status = kfs(env, "status").stdout
        assert f"storage:  {storage}" in status and "node id:" in status and "warning" not in status

        # a colleague fetches what the plain command stored
        b = daemon("b", "daemon", "--channel", "lab", *LOCAL)
        b.wait_log("listening on")
        wait_until_connected(b, a)
        assert kfs(b.env, "cat", uri).stdout == "results\n"

        # a store that is not the daemon's: used, with one warning line
        other = tmp_path / "other"
        warned = kfs(env, "store", "--storage", str(other), str(tmp_path / "data.txt"))
        assert warned.stderr.count("\n") == 1 and "warning: using storage" in warned.stderr
        assert str(storage) in warned.stderr and "not served to peers" in warned.stderr
        py = python(env, f"import kacheryfs as kfs, warnings; warnings.simplefilter('error'); "
                         f"kfs.store_text('x', storage_dir={str(other)!r})")
        assert py.returncode != 0 and "KacheryWarning" in py.stderr and "not served to peers" in py.stderr
    finally:
        a.stop()


@pytest.mark.timeout(120)
def test_several_daemons_and_none_for_the_default_config_dir(tmp_path):
    env = user_env(tmp_path)
    running = tmp_path / "home" / ".kachery-p2p" / "running"  # the registry, in the user's home
    procs = []
    try:
        for name in ("one", "two"):
            procs.append(subprocess.Popen(
                [KACHERYFS, "daemon", "--config-dir", str(tmp_path / name), "--storage", str(tmp_path / f"{name}-store"),
                 *LOCAL], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.monotonic() + 30
        while not locate(environ=env).warning:  # until both have registered
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.1)
        assert oct(running.stat().st_mode & 0o777) == "0o700"
        result = kfs(env, "status")
        assert "warning: several kacheryfs daemons run" in result.stderr and "--config-dir" in result.stderr
        chosen = kfs(env, "status", "--config-dir", str(tmp_path / "one"))
        assert chosen.stderr == "" and f"storage:  {tmp_path / 'one-store'}" in chosen.stdout
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=20)
    assert not list(running.glob("*.json"))  # each daemon removed its entry


def test_kachery_p2p_api_port_breaks_no_command(cli):
    """KACHERY_P2P_API_PORT only sets the HTTP gateway's port where a daemon starts: whatever it
    holds, other commands work (it used to break every command when not a number)."""
    for value in ("abc", "20431", ""):
        env = {**cli.env, "KACHERY_P2P_API_PORT": value}
        result = subprocess.run([KACHERYFS, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "storage:" in result.stdout, result.stderr
"""Who may use a mount: --allow-other for another local user (a Jupyter server, a container), the
advice when it is not allowed, and a clear hint when /dev/fuse cannot be opened. Real mounts; the
other user is uid 65534 (nobody) through setpriv; the missing or closed device is staged in a
private mount namespace this test makes (unshare -m), so nothing outside it changes."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from kacheryfs.fs.mount import allow_other_problem, fuse_device_problem

from .mounting import KACHERYFS, Mount

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("unshare"),
                                reason="needs root, setpriv and unshare (util-linux)")


def as_nobody(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NOBODY, *cmd], capture_output=True, timeout=30)


@needs_root
@pytest.mark.parametrize("allow_other", [False, True])
def test_another_user_reads_the_mount_only_with_allow_other(allow_other):
    # the other user must reach the mountpoint at all: not under pytest's 0700 tmp directory
    root = Path(tempfile.mkdtemp(prefix="kacheryfs-access-"))
    os.chmod(root, 0o755)
    m = Mount(root)
    try:
        m.start(*(["--allow-other"] if allow_other else []))
        m.path("store", "x.txt").write_text("shared\n")
        read = as_nobody("cat", str(m.path("store", "x.txt")))
        if allow_other:
            assert read.returncode == 0 and read.stdout == b"shared\n", read.stderr
            # ... but read-only for them: the kernel checks the modes the mount reports
            write = as_nobody("sh", "-c", f"echo x > {m.path('store', 'y.txt')}")
            assert write.returncode != 0 and b"Permission denied" in write.stderr
            assert not os.path.exists(m.path("store", "y.txt"))
        else:
            assert read.returncode != 0 and b"Permission denied" in read.stderr
        assert ("other users may read it" in m.read_log()) == allow_other
    finally:
        m.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_allow_other_advice():
    conf = "/nonexistent/fuse.conf"
    assert allow_other_problem(0, conf) is None  # root may always
    advice = allow_other_problem(1000, conf)
    assert "user_allow_other" in advice and conf in advice


def test_allow_other_allowed_by_fuse_conf(tmp_path):
    conf = tmp_path / "fuse.conf"
    conf.write_text("# user_allow_other\nmount_max = 10\n")
    assert "user_allow_other" in allow_other_problem(1000, str(conf))  # a comment does not count
    conf.write_text("mount_max = 10\n  user_allow_other  \n")
    assert allow_other_problem(1000, str(conf)) is None


def test_device_advice(tmp_path):
    assert fuse_device_problem() is None  # this machine mounts
    assert "modprobe fuse" in fuse_device_problem(str(tmp_path / "missing"))


@needs_root
@pytest.mark.parametrize("stage,advice", [
    ("mount -t tmpfs none /dev", "/dev/fuse does not exist: load the FUSE module (sudo modprobe fuse)"),
    # a device node root cannot open once its capabilities are dropped
    ("mount --bind {closed} /dev/fuse", "cannot open /dev/fuse (permission denied)"),
])
def test_mount_without_a_usable_fuse_device_says_what_to_do(tmp_path, stage, advice):
    closed = tmp_path / "closed"
    closed.touch(mode=0o000)
    drop = "setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all"
    script = f"{stage.format(closed=closed)} && exec {drop} {KACHERYFS} mount {tmp_path / 'mnt'}"
    env = Mount(tmp_path).env
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=env,
                            capture_output=True, timeout=60)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert advice in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.ismount(tmp_path / "mnt")

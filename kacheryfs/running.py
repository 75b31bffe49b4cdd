"""Which store and which daemon the CLI and Python use: the same as the running mount's.

Every daemon (``kacheryfs mount`` or ``daemon``) registers its pid, config dir, storage dir and
mountpoint in this user's *running directory* (Config.running_dir: one per user, whatever config
dir a daemon uses). ``locate`` then resolves the dirs a command or a script works with:

- a daemon running with the config dir asked for (flag, environment or default) is used, and its
  storage dir too unless one was given;
- with no config dir given and no daemon for the default one, the one daemon running is used (a
  mount started with ``--config-dir`` is found by a plain ``kacheryfs store``);
- a storage dir given that differs from the daemon's is used, with a warning: what is stored there
  is not served, and what the daemon fetches lands elsewhere.

Entries of dead daemons are ignored and removed; the directory and its files must be the user's
own (0700/0600), so another local user cannot plant a daemon for us to write to.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import warnings
from typing import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import API_SOCKET, Config
from .errors import KacheryWarning


@dataclass(frozen=True)
class RunningDaemon:
    pid: int
    config_dir: Path
    storage_dir: Path
    mountpoint: str | None

    def describe(self) -> str:
        what = f"the mount at {self.mountpoint}" if self.mountpoint else f"the daemon (pid {self.pid})"
        return f"{what}, config dir {self.config_dir}"


@dataclass(frozen=True)
class Located:
    config: Config
    daemon: RunningDaemon | None  # the running daemon these dirs belong to
    warning: str | None = None


class Registration:
    """A running daemon's entry; removed by ``remove`` (a dead one is ignored by readers anyway)."""

    def __init__(self, config: Config, mountpoint: str | os.PathLike | None):
        self.path = config.running_dir / f"{os.getpid()}.json"
        _own_dir(config.running_dir)
        data = json.dumps({"pid": os.getpid(), "config_dir": str(config.config_dir),
                           "storage_dir": str(config.storage_dir),
                           "mountpoint": None if mountpoint is None else str(mountpoint)})
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _own_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def running_daemons(running_dir: Path) -> list[RunningDaemon]:
    """This user's live daemons, oldest entry first."""
    try:
        st = running_dir.stat()
    except OSError:
        return []
    if st.st_uid != os.getuid() or not stat.S_ISDIR(st.st_mode):
        return []
    out = []
    for entry in sorted(running_dir.glob("*.json"), key=lambda p: p.stat().st_mtime if p.exists() else 0):
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            info = json.loads(entry.read_text())
            daemon = RunningDaemon(int(info["pid"]), Path(info["config_dir"]), Path(info["storage_dir"]),
                                   info.get("mountpoint"))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not _pid_alive(daemon.pid):
            entry.unlink(missing_ok=True)
        elif (daemon.config_dir / API_SOCKET).exists():  # not yet (starting), or a reused pid: skipped
            out.append(daemon)
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: the pid was reused
    return True


def locate(storage_dir=None, config_dir=None, environ: dict[str, str] | None = None) -> Located:
    """The dirs to use for this command or call, and the running daemon they belong to."""
    env = os.environ if environ is None else environ
    config = Config.from_env(storage_dir=storage_dir, config_dir=config_dir, environ=env)
    storage_given = bool(storage_dir or env.get("KACHERY_STORAGE_DIR"))
    config_given = bool(config_dir or env.get("KACHERY_P2P_CONFIG_DIR"))
    daemons = running_daemons(config.running_dir)
    daemon = next((d for d in daemons if d.config_dir == config.config_dir), None)
    if daemon is None and not config_given and len(daemons) == 1:
        daemon = daemons[0]
        config = dataclasses.replace(config, config_dir=daemon.config_dir)
    warning = None
    if daemon is None and not config_given and len(daemons) > 1:
        warning = ("several kacheryfs daemons run (" + "; ".join(d.describe() for d in daemons) +
                   f") and none with the default config dir {config.config_dir}: give --config-dir "
                   "(or KACHERY_P2P_CONFIG_DIR) to use one")
    elif daemon is not None and not storage_given:
        config = dataclasses.replace(config, storage_dir=daemon.storage_dir)
    elif daemon is not None and daemon.storage_dir != config.storage_dir:
        warning = (f"using storage {config.storage_dir}, but {daemon.describe()} uses {daemon.storage_dir}: "
                   "files stored here are not served to peers, and files it fetches land there "
                   f"(give --storage {daemon.storage_dir}, or leave --storage and KACHERY_STORAGE_DIR unset)")
    return Located(config, daemon, warning)


_warned: set[str] = set()


def located_config(storage_dir=None, config_dir=None, warn: Callable[[str], None] | None = None) -> Config:
    """``locate``'s dirs as a Config; a mismatch is warned about once per process (Python: a
    KacheryWarning; the CLI passes its own ``warn``, a line on stderr)."""
    located = locate(storage_dir, config_dir)
    if located.warning is not None and located.warning not in _warned:
        _warned.add(located.warning)
        if warn is None:
            warnings.warn(located.warning, KacheryWarning, stacklevel=3)
        else:
            warn(located.warning)
    return located.config

"""Cache control commands: ``kacheryfs ls``, ``pin``, ``unpin``, ``gc``. Command definitions only."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from .config import DEFAULT_CACHE_SIZE, Config, parse_size
from .errors import KacheryError, ObjectNotFound
from .running import located_config
from .store import LocalStore, parse_uri

storage_option = click.option(
    "--storage", "storage_dir", type=click.Path(file_okay=False), default=None,
    help="Storage directory (default: $KACHERY_STORAGE_DIR or ~/kachery-storage).")
config_option = click.option(
    "--config-dir", type=click.Path(file_okay=False), default=None,
    help="Config directory (default: $KACHERY_P2P_CONFIG_DIR or ~/.kachery-p2p).")


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cli_config(storage_dir=None, config_dir=None) -> Config:
    """The dirs a command works with: a running mount's or daemon's, found whatever flags were given
    (kacheryfs/running.py); a storage dir that differs from its is a warning (one line: cli.main)."""
    return located_config(storage_dir, config_dir)


def _store(storage_dir, config_dir=None) -> LocalStore:
    return LocalStore(cli_config(storage_dir, config_dir).storage_dir)


def daemon_status(config_dir) -> dict | None:
    """The running daemon's status, or None when none runs for this config dir."""
    return _daemon_call(config_dir, "status", "status")


def _daemon_call(config_dir, op: str, key: str, **fields):
    """``config_dir``: as located (cli_config)."""
    from .api.client import call
    from .errors import NoDaemon

    try:
        return call(Path(config_dir), op, **fields)[key]
    except NoDaemon:
        return None


@click.command("ls")
@click.option("--cached", is_flag=True, help="Only copies fetched from peers (evictable unless pinned).")
@click.option("--stored", is_flag=True, help="Only objects stored on this node.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@storage_option
@config_option
def ls(cached, stored, as_json, storage_dir, config_dir):
    """List the objects held here, most recently used first: hash, size, stored or cached, pinned,
    last access, names."""
    if cached and stored:
        raise KacheryError("--cached and --stored exclude each other (neither flag lists both)")
    only = "cached" if cached else "stored" if stored else None
    config = cli_config(storage_dir, config_dir)
    _daemon_call(config.config_dir, "cache", "ok")  # a running daemon keeps recent reads in memory: write them
    store = LocalStore(config.storage_dir)
    try:
        listed = store.listing()
    finally:
        store.close()
    for obj in listed:
        if only == "cached" and obj.stored or only == "stored" and not obj.stored:
            continue
        names = list(obj.names) or ([f"(manifest of {obj.manifest_of[:12]})"] if obj.manifest_of else [])
        if as_json:
            click.echo(json.dumps({"sha1": obj.sha1, "size": obj.size, "kind": "stored" if obj.stored else "cached",
                                   "pinned": obj.pinned, "evictable": obj.evictable,
                                   "last_access": round(obj.last_access, 3), "names": list(obj.names),
                                   "manifest_of": obj.manifest_of}))
        else:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(obj.last_access))
            click.echo(f"{obj.sha1}  {human(obj.size):>10}  {'stored' if obj.stored else 'cached'}  "
                       f"{'pinned' if obj.pinned else '-':<6}  {when}  {' '.join(names)}")


@click.command()
@click.argument("uri")
@storage_option
@config_option
def pin(uri, storage_dir, config_dir):
    """Keep an object whatever the cache size (fetched from channel peers first if need be)."""
    from .cli import _local_path

    parsed = parse_uri(uri)
    _local_path(str(parsed), storage_dir, config_dir)  # fetched through the daemon if not held
    store = _store(storage_dir, config_dir)
    try:
        record = store.pin(parsed.sha1)
    finally:
        store.close()
    click.echo(f"pinned {parsed.sha1} ({human(record.size)})")


@click.command()
@click.argument("uri")
@storage_option
@config_option
def unpin(uri, storage_dir, config_dir):
    """Let a pinned cached copy be evicted again (least recently used first)."""
    parsed = parse_uri(uri)
    store = _store(storage_dir, config_dir)
    try:
        if not store.unpin(parsed.sha1):
            record = store.info(parsed.sha1)
            if record is None:
                raise ObjectNotFound(f"{parsed.sha1} is not held here")
            if record.pinned:  # the index's "pinned" column: stored on this node
                raise KacheryError(f"{parsed.sha1} was stored on this node, not pinned: stored objects "
                                   "are kept (only cached copies from peers are evicted)")
            raise KacheryError(f"{parsed.sha1} is not pinned")
    finally:
        store.close()
    click.echo(f"unpinned {parsed.sha1}")


@click.command()
@click.option("--to", "target", default=None, metavar="SIZE",
              help="Evict until cached copies take at most SIZE (e.g. 10G, 0). "
                   "Default: the running daemon's --cache-size, else 100G.")
@storage_option
@config_option
def gc(target, storage_dir, config_dir):
    """Evict cached copies, least recently used first, never pinned or stored-here objects."""
    config = cli_config(storage_dir, config_dir)
    if target is not None:
        limit = parse_size(target)
    else:
        status = daemon_status(config.config_dir)
        limit = (status or {}).get("cache_size") or DEFAULT_CACHE_SIZE
    store = LocalStore(config.storage_dir)
    try:
        sizes = {o.sha1: o.size for o in store.listing()}
        # through a running daemon, which knows what was read lately; else here
        evicted = _daemon_call(config.config_dir, "cache", "evicted", to=limit)
        if evicted is None:
            evicted = store.evict_cached(limit)
        left = store.cached_total()
    finally:
        store.close()
    freed = sum(sizes.get(s, 0) for s in evicted)
    click.echo(f"evicted {len(evicted)} objects ({human(freed)}); cached copies now {human(left)} "
               f"(limit {human(limit)})")
    if left > limit:
        click.echo("the rest are pinned: `kacheryfs unpin URI` lets them go", err=True)

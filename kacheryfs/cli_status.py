"""`kacheryfs status` as text: a pure function of the status dict (what `status --json` prints)."""

from __future__ import annotations

from .cli_cache import human


def _rates(p: dict) -> str:
    return (f"in {human(p.get('rate_in', 0))}/s  out {human(p.get('rate_out', 0))}/s  "
            f"(total in {human(p['received'])}, out {human(p['sent'])})")


def _session_line(p: dict) -> str:
    channels = ", ".join(p["channels"]) if isinstance(p.get("channels"), list) else str(p.get("channels", ""))
    return (f"  {p['node'][:16]}  {p.get('path') or p['direction']:<12} {p['remote']:<26} "
            f"{channels + '  ' if channels else ''}{_rates(p)}")


def status_lines(info: dict) -> list[str]:
    lines = [
        f"storage:  {info['storage_dir']}",
        f"objects:  {info['objects']} files ({human(info['bytes'])}; cached copies {human(info['cached_bytes'])})",
        f"names:    {info['names']} under store/",
        f"disk:     {human(info['disk_free'])} free of {human(info['disk_total'])}",
    ]
    if not info["mounts"]:
        lines.append("mounts:   none")
    for m in info["mounts"]:
        lines.append(f"mount:    {m['mountpoint']} (pid {m['pid']}, storage {m['storage_dir']})")
    node = info["daemon"]
    if node is None:
        lines.append("daemon:   not running")
        return lines
    lines.append(f"node id:  {node['node_id']}" + ("  (a bootstrap)" if node.get("bootstrap") else ""))
    if node.get("storage_dir"):
        lines.append(f"daemon:   pid {node.get('pid')}, storage {node['storage_dir']}, config dir {node.get('config_dir')}")
        if node["storage_dir"] != info["storage_dir"]:
            lines.append(f"warning:  the storage above is {info['storage_dir']}, not the daemon's: files stored "
                         "there are not served to peers")
    lines.append(f"listen:   {', '.join(node['listen']) or 'none (reachable through relays)'}")
    if node.get("observed"):
        lines.append(f"observed: {', '.join(node['observed'])} (where the bootstrap sees this node)")
    if node.get("relay"):  # a bootstrap
        relay, punch = node["relay"], node.get("punch", {})
        limits = ", ".join(f"{k} {v}" for k, v in relay["closed_by_limit"].items()) or "none"
        lines.append(f"relay:    {human(relay['bytes'])} relayed, {relay['open']} circuits open "
                     f"({relay['opened']} opened), limits hit: {limits}")
        refused = ", ".join(f"{k} {v}" for k, v in punch.get("refused", {}).items()) or "none"
        lines.append(f"punches:  {punch.get('forwarded', 0)} coordinated, refused: {refused}")
    if node.get("http"):
        lines.append(f"http:     {node['http']}")
    if node.get("bootstrap"):
        nodes = node["peers"]
        lines.append(f"nodes:    {len(nodes)} connected, {node.get('registered', 0)} registered")
        lines.extend(_session_line(p) for p in nodes)
        return lines
    channels = node.get("channels")
    if isinstance(channels, list):
        channels = ", ".join(channels) or "none (join one with --channel NAME: nothing is shared or fetched)"
    lines.append(f"channels: {channels}")
    lines.append(f"fetched:  {human(node['fetched_bytes'])}")
    bootstraps = [p for p in node["peers"] if p.get("role") == "bootstrap"]
    peers = [p for p in node["peers"] if p.get("role") != "bootstrap"]
    for p in bootstraps:
        lines.append(f"bootstrap: {p['node'][:16]}  {p['remote']}  {_rates(p)}")
    lines.append(f"peers:    {len(peers)}")
    lines.extend(_session_line(p) for p in peers)
    return lines + swarm_lines(node)


def swarm_lines(node: dict) -> list[str]:
    """The DHT node and the swarm view of each object being fetched, from a node's status."""
    lines = []
    if node.get("dht"):
        lines.append(f"dht:      UDP port {node['dht']['port']}, {node['dht']['nodes']} nodes in the routing table")
    for fetch in node.get("swarm", []):
        lines.append(f"fetching: {fetch['sha1']}  {fetch['have']}/{fetch['chunks']} chunks, "
                     f"{len(fetch['providers'])} providers "
                     f"({sum(p['state'] == 'active' for p in fetch['providers'])} asked), "
                     f"{fetch['interested']} peers told of new chunks, "
                     f"{fetch['moves']} requests moved, {fetch['duplicates']} endgame duplicates")
        for p in sorted(fetch["providers"], key=lambda p: -p["chunks_from"]):
            holds = {"all": "whole", None: "-"}.get(p["holds"], f"{p['holds']} chunks")
            lines.append(f"  {p['node'][:16]}  holds {holds:<12} sent us {p['chunks_from']:>5} chunks  "
                         f"in flight {p['in_flight']:>3}  {p['state']}")
    return lines

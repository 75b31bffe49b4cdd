#!/usr/bin/env python3
"""Where the CPU goes, from py-spy raw (collapsed) profiles of bench_network.py --profile DIR.

    .venv/bin/python benchmarks/flame_summary.py DIR/kfs_load-B.txt --gib 1.0 [--rate 200]

Each line of a raw profile is ``frame;frame;...;leaf count``; recorded without --idle, a sample is a
thread on a CPU for 1/rate s. Every stack is put in the first category whose pattern matches it (leaf
first), and the CPU seconds per GiB moved are printed per category, then the top leaf frames.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

CATEGORIES = [  # (name, regex on the whole stack; first match wins, checked leaf-first per frame)
    ("decrypt (secretstream pull / AEAD open)", r"crypto_secretstream_xchacha20poly1305_pull|decrypt|open_in_place|_open\b|\bpull\b"),
    ("encrypt (secretstream push / AEAD seal)", r"crypto_secretstream_xchacha20poly1305_push|encrypt|seal|\bpush\b"),
    ("SHA-1 chunk verify", r"verify_chunk|hashlib|sha1|_sha1|openssl_sha1"),
    ("whole-file SHA-1", r"advance_hash"),
    ("xxh3 rot checksum", r"xxh3|xxhash"),
    ("pwrite / write to disk", r"pwrite|_pwrite_all|write_chunk|Sink.write"),
    ("pread / sendfile / read from disk", r"pread|preadv|read_into|readinto"),
    ("socket recv", r"recv_into|recv\b|receive_some|_receive\b"),
    ("socket send", r"send_all|sendmsg|\bsend\b"),
    ("writeback / fsync", r"sync_file_range|start_writeback|fsync|fdatasync"),
    ("FUSE handlers", r"pyfuse3|operations\.py|\bread \(kacheryfs/fs"),
    ("frame parse / protocol", r"protocol/|receive_data|next_event|decode|encode"),
    ("trio scheduler / threads", r"trio/|to_thread|threading\.py|queue\.py"),
]


def load(path: str) -> Counter:
    stacks: Counter = Counter()
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if stack and count.isdigit():
                stacks[stack] += int(count)
    return stacks


def categorize(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):  # leaf first: the innermost recognisable work names the sample
        for name, pattern in CATEGORIES:
            if re.search(pattern, frame):
                return name
    return "other Python"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("profiles", nargs="+")
    p.add_argument("--gib", type=float, default=1.0, help="GiB moved while recording")
    p.add_argument("--rate", type=float, default=200.0, help="py-spy sampling rate (Hz)")
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()
    for path in args.profiles:
        stacks = load(path)
        total = sum(stacks.values())
        cats: Counter = Counter()
        leaves: Counter = Counter()
        for stack, n in stacks.items():
            cats[categorize(stack)] += n
            leaves[stack.split(";")[-1]] += n
        print(f"## {path}: {total / args.rate:.2f} CPU-s sampled, {total / args.rate / args.gib:.2f} CPU-s per GiB")
        print("| where | CPU-s per GiB | share |\n|---|---:|---:|")
        for name, n in cats.most_common():
            print(f"| {name} | {n / args.rate / args.gib:.2f} | {n / total:.0%} |")
        print("\ntop leaf frames:")
        for leaf, n in leaves.most_common(args.top):
            print(f"  {n / total:5.1%}  {leaf[:150]}")
        print()


if __name__ == "__main__":
    main()

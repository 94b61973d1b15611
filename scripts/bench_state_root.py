"""Benchmark of the state root tree (node/smt.py): build, memory, block update, proofs.

Usage: ``.venv/bin/python scripts/bench_state_root.py [--sizes 10000 100000 1000000]``

For each state size, in a fresh interpreter (so memory figures do not mix):

* build: :meth:`SparseMerkleTree.from_items` over N ``(key_hash, value_hash)`` pairs, as a
  node does at start-up from its state table;
* memory: what the finished tree keeps allocated (tracemalloc, on a second build) and the
  peak during that build, plus the process's resident set after the timed build;
* update: blocks of 4,000 changes (2,000 new keys, 2,000 changed values of existing keys),
  the state changes of a block of 2,000 provenance transactions; median and worst;
* proofs: generation and verification of a proof per changed key of one block.

Not a test: nothing here asserts a time. Results go to docs/benchmarks.md, "State root".
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.smt import SparseMerkleTree, verify_state_proof

CHANGES_PER_BLOCK = 4_000
BLOCKS = 20


def _key(number: int) -> bytes:
    return hashlib.sha256(b"asset/lot-%d" % number).digest()


def _value(number: int, version: int) -> bytes:
    return hashlib.sha256(b"value-%d-%d" % (number, version)).digest()


def _items(size: int) -> list[tuple[bytes, bytes]]:
    return [(_key(number), _value(number, 0)) for number in range(size)]


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(size: int) -> str:
    rng = random.Random(size)
    items = _items(size)

    started = time.perf_counter()
    tree = SparseMerkleTree.from_items(items)
    build_s = time.perf_counter() - started
    rss_mib = _rss_mib("VmRSS")

    # Memory: rebuild under tracemalloc; "kept" is what the finished tree holds.
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    twin = SparseMerkleTree.from_items(items)
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    kept_mib = (kept - baseline) / 2**20
    peak_mib = (peak - baseline) / 2**20
    invariant_root = twin.root() == tree.root()
    del twin, items

    update_ms: list[float] = []
    next_key = size
    last_changes: dict[bytes, bytes | None] = {}
    for block in range(BLOCKS):
        changes: dict[bytes, bytes | None] = {}
        for number in range(next_key, next_key + CHANGES_PER_BLOCK // 2):
            changes[_key(number)] = _value(number, 0)
        for number in rng.sample(range(size), CHANGES_PER_BLOCK // 2):
            changes[_key(number)] = _value(number, block + 1)
        next_key += CHANGES_PER_BLOCK // 2
        started = time.perf_counter()
        tree.update(changes)
        update_ms.append((time.perf_counter() - started) * 1000)
        last_changes = changes

    root = tree.root()
    started = time.perf_counter()
    proofs = [(key, value, tree.prove(key)) for key, value in last_changes.items()]
    prove_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    for key, value, proof in proofs:
        verify_state_proof(root, key, value, proof)
    verify_ms = (time.perf_counter() - started) * 1000
    siblings = statistics.mean(len(proof.siblings) for _, _, proof in proofs)

    return (
        f"| {size:,} | {build_s:.2f} s | {kept_mib:.0f} MiB | {peak_mib:.0f} MiB "
        f"| {rss_mib:.0f} MiB | {statistics.median(update_ms):.1f} ms "
        f"| {max(update_ms):.1f} ms | {prove_ms:.1f} ms | {verify_ms:.1f} ms "
        f"| {siblings:.1f} |" + ("" if invariant_root else " ROOT MISMATCH")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.one is not None:
        print(run_one(arguments.one), flush=True)
        return
    print(
        f"Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.platform()}"
    )
    print(f"{BLOCKS} blocks of {CHANGES_PER_BLOCK:,} changes (half inserts, half updates)\n")
    print(
        "| entries | build | tree memory | build peak | process RSS | update median "
        "| update worst | prove 4,000 | verify 4,000 | mean siblings |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in arguments.sizes:
        subprocess.run([sys.executable, __file__, "--one", str(size)], check=True)


if __name__ == "__main__":
    main()

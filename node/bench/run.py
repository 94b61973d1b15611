"""One benchmark run against coopledger: start (or target) a testnet, load it, measure."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from node.bench import coop
from node.bench.engine import Engine
from node.bench.procstat import ProcessSample, sample, verifications_per_s
from node.bench.profile import start_recording, summarise
from node.bench.report import figures, process_figures
from node.bench.workload import lots
from node.limits import TX_EXPIRY_MS_MAX
from node.testnet import read_description, wait_started

PRESIGN_RATE_GUESS = 4_000
"""Transactions a second to prepare for when ``--rate 0`` (as fast as possible): above the
target, so a run rarely has to sign inside the window."""

PRESIGN_TXS_MAX = 400_000
"""Beyond this, signing continues during the run (counted in the report): memory."""

MEMORY_SAMPLE_S = 5.0

SAMPLE_EVERY = 100
"""One transaction in this many is sent with ``?wait=commit`` and timed to its receipt.
Each such wait makes the gateway read the block and rebuild its Merkle tree for the proof
(about 10 ms for a 2,000-transaction block), so a larger share would load the nodes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    validators: int = 4
    db: str = "sqlite"
    duration_s: float = 30.0
    warmup_s: float = 5.0
    clients: int = 192
    rate_per_s: float = 0.0
    testnet: Path | None = None
    directory: Path | None = None
    base_port: int = 31000
    profile: bool = False
    keep: bool = False


Progress = Callable[[str], None]


def prepare_count(options: Options) -> int:
    rate = options.rate_per_s or PRESIGN_RATE_GUESS
    return min(int(rate * (options.warmup_s + options.duration_s) * 1.1), PRESIGN_TXS_MAX)


def run_coopledger(options: Options, progress: Progress) -> dict[str, Any]:
    progress("measuring Ed25519 verifications per second on one core")
    verify_per_s = verifications_per_s()
    cores = os.cpu_count() or 1
    own = options.testnet is None
    if own:
        directory = options.directory or Path(tempfile.mkdtemp(prefix="coopledger-bench-"))
        progress(f"starting {options.validators} validators in {directory}")
        description = coop.start_testnet(
            directory, validators=options.validators, db=options.db, base_port=options.base_port
        )
    else:
        assert options.testnet is not None
        directory = options.testnet.resolve()
        description = read_description(directory)
    try:
        result = _load(description, directory, options, progress)
    finally:
        if own:
            progress("stopping the testnet")
            coop.stop_testnet(directory)
            if not options.keep and options.directory is None:
                shutil.rmtree(directory, ignore_errors=True)
    validators = len(description["nodes"])
    limit = cores * verify_per_s / validators
    result.update(
        {
            "validators": validators,
            "db": "sqlite" if options.db == "sqlite" else "postgresql",
            "cores": cores,
            "verify_per_s_one_core": round(verify_per_s),
            "sig_limit_tx_per_s": round(limit),
            "sig_limit_share": round(result["tx_per_s"] / limit, 3) if limit else None,
            "rate_target_tx_per_s": options.rate_per_s,
            "testnet": str(directory) if not own or options.keep else None,
        }
    )
    return result


def _load(
    description: dict[str, Any], directory: Path, options: Options, progress: Progress
) -> dict[str, Any]:
    total_s = options.warmup_s + options.duration_s
    expiry_window_ms = int(min((total_s + 600) * 1000, TX_EXPIRY_MS_MAX - 60_000))
    backend = coop.CoopBackend(
        description, expiry_window_ms, connections_per_node=_per_node(options, description)
    )
    run_id = uuid.uuid4().hex[:8]
    deadline_ms = time.time_ns() // 1_000_000 + expiry_window_ms + 3_600_000
    engine = Engine(
        backend,
        lots(run_id, deadline_ms),
        rate_per_s=options.rate_per_s,
        sample_every=SAMPLE_EVERY,
    )
    backend.engine = engine
    count = prepare_count(options)
    engine.prepare(count, lambda n: progress(f"signing transactions: {n:,} of {count:,}"))
    progress("waiting for the validators to commit")
    wait_started(directory, description)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_measure(engine, backend, description, directory, options, progress))


def _per_node(options: Options, description: dict[str, Any]) -> int:
    return max(1, -(-options.clients // len(description["nodes"])))


async def _measure(  # noqa: PLR0917 (one call site, the run's parts)
    engine: Engine,
    backend: coop.CoopBackend,
    description: dict[str, Any],
    directory: Path,
    options: Options,
    progress: Progress,
) -> dict[str, Any]:
    nodes = description["nodes"]
    pids = [int(node["pid"]) for node in nodes]
    await backend.start_http()
    height = await backend.height(backend.apis[0])
    await backend.start(height)
    window: dict[str, list[ProcessSample | None]] = {}
    timeline: list[list[int]] = [[] for _ in pids]
    profile_out = directory / "validator-0.pyspy.txt"
    recorder: list[Any] = []

    async def watch() -> None:
        m = engine.measurement
        while time.monotonic() < m.window_start_s:
            await asyncio.sleep(0.01)
        window["before"] = [sample(pid) for pid in pids]
        if options.profile:
            recorder.append(start_recording(pids[0], options.duration_s, profile_out))
        next_memory = time.monotonic()
        while time.monotonic() < m.window_end_s:
            if time.monotonic() >= next_memory:
                next_memory += MEMORY_SAMPLE_S
                for index, pid in enumerate(pids):
                    current = sample(pid)
                    timeline[index].append(current.rss_kib if current else 0)
            await asyncio.sleep(0.01)
        window["after"] = [sample(pid) for pid in pids]

    watcher = asyncio.get_running_loop().create_task(watch())
    started_cpu = time.process_time()
    try:
        measurement = await engine.run(options.warmup_s, options.duration_s, progress)
        await watcher
    finally:
        watcher.cancel()
        await backend.close()
    client_cpu_s = time.process_time() - started_cpu
    result = figures(measurement)
    result["per_validator"] = process_figures(
        [node["name"] for node in nodes],
        window["before"],
        window["after"],
        result["duration_s"],
        timeline,
        sample_s=MEMORY_SAMPLE_S,
    )
    result["load_generator_cpu_percent"] = round(
        100 * client_cpu_s / (options.warmup_s + options.duration_s), 1
    )
    if recorder and recorder[0] is not None:
        recorder[0].wait(timeout=60)
        if profile_out.exists():
            result["profile"] = {"validator": nodes[0]["name"], **summarise(profile_out)}
    return result

"""Where a validator's time goes: py-spy samples of one process, summed by phase.

``py-spy record --format raw`` writes one line per distinct stack, ``frame;frame;... N``
(root first, ``function (file:line)``), sampling only while the process runs Python or
native code (not while it sleeps in the event loop). Each stack is charged to the phase of
its deepest marker frame, so the signature check inside admission counts as admission and
a SQLite insert inside a block commit as storage.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

PHASE_MARKERS: tuple[tuple[str, str], ...] = (
    ("uvicorn/", "http and gateway"),
    ("starlette/", "http and gateway"),
    ("fastapi/", "http and gateway"),
    ("gateway/", "http and gateway"),
    ("consensus/", "consensus"),
    ("node/transport", "gossip and peer transport"),
    ("node/wire", "gossip and peer transport"),
    ("_flush_gossip", "gossip and peer transport"),
    ("_on_peer_frame", "gossip and peer transport"),
    ("_admit_many", "admission"),
    ("_signatures_valid", "admission"),
    ("build_block", "execution"),
    ("validate_block", "execution"),
    ("execute (node/ledger.py", "execution"),
    ("commit (node/ledger.py", "storage"),
    ("node/storage", "storage"),
)
"""``(substring of a frame, phase)``; the deepest frame of a stack that matches decides."""


def py_spy() -> str | None:
    return shutil.which("py-spy") or next(
        (str(p) for p in [Path(".venv/bin/py-spy")] if p.exists()), None
    )


def start_recording(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    binary = py_spy()
    if binary is None:
        return None
    return subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
         "--format", "raw", "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def summarise(raw: Path, top: int = 12) -> dict[str, object]:
    """Samples per phase and the functions with the most self time."""
    phases: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        phase = "other (event loop, asyncio, logging)"
        for frame in frames:
            for marker, name in PHASE_MARKERS:
                if marker in frame:
                    phase = name
        phases[phase] += count
        self_time[frames[-1]] += count
    return {
        "samples": total,
        "phases": {name: round(n / total, 3) for name, n in phases.most_common()} if total else {},
        "top_self": [
            {"function": name, "share": round(n / total, 3)}
            for name, n in self_time.most_common(top if total else 0)
        ],
    }

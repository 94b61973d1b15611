"""Process CPU and memory from ``/proc``, and the machine's signature-verification limit."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import nacl.bindings

from node.crypto import KeyPair, signing_bytes

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
SIG_LOOP_S = 2.0


@dataclass(frozen=True, slots=True)
class ProcessSample:
    cpu_s: float
    """utime + stime so far."""
    rss_kib: int
    hwm_kib: int
    """Peak resident set (VmHWM) over the process's life."""


def sample(pid: int) -> ProcessSample | None:
    """The process's CPU time and memory now; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
        with open(f"/proc/{pid}/status") as handle:
            status = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its ")" are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S
    memory = {}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            memory[name] = int(value.split()[0])
    return ProcessSample(cpu_s, memory.get("VmRSS", 0), memory.get("VmHWM", 0))


def verifications_per_s(seconds: float = SIG_LOOP_S) -> float:
    """Strict Ed25519 verifications a second on one core: libsodium through PyNaCl, the
    call admission makes, without the hex decoding around it (the physical bound)."""
    key = KeyPair.generate()
    message = signing_bytes("tx", {"benchmark": "signature limit", "nonce": 1})
    signed = bytes.fromhex(key.sign_raw(message)) + message
    public_key = bytes.fromhex(key.public_key)
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            nacl.bindings.crypto_sign_open(signed, public_key)
        count += 100
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)

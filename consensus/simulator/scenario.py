"""Which faults a seed injects, and when: everything drawn from the seed alone.

A scenario has a *chaos* phase, from time 0 to ``heal_ms``, during which the network and
node faults act; at ``heal_ms`` partitions and clogs are lifted, losses stop, delays
shrink and crashed validators restart. Byzantine validators (at most f, Twins included)
stay faulty for the whole run: they are the "permanently faulty" of the liveness check.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from node.genesis import fault_tolerance

NETWORK_FAULTS = ("delay", "loss", "duplicate", "reorder", "partition", "clog")
NODE_FAULTS = ("crash", "drift")
BYZANTINE_FAULTS = ("equivocate", "double-vote", "unknown-block", "bad-signature", "twins")
FAULT_KINDS = NETWORK_FAULTS + NODE_FAULTS + BYZANTINE_FAULTS

FAULT_ACTIVE_PROBABILITY = 0.6
"""Each enabled fault acts in a given seed with this probability, so that seeds mix faults
in many combinations instead of always all at once."""


@dataclass(frozen=True, slots=True)
class LinkFault:
    """Links ``pairs`` (sender, receiver) are cut from ``start_ms`` until ``end_ms``."""

    label: str
    start_ms: int
    end_ms: int
    pairs: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Crash:
    instance: int
    at_ms: int
    down_ms: int
    before_send: bool
    """Crash between persisting the safety record and sending the signed messages."""


@dataclass(frozen=True, slots=True)
class Scenario:
    seed: int
    validators: int
    active: tuple[str, ...]
    byzantine: tuple[tuple[int, str], ...]
    """(validator index, behaviour); at most f entries."""
    twin_groups: tuple[tuple[int, ...], tuple[int, ...]] | None
    """For Twins: the instances the original and the twin instance talk to."""
    heal_ms: int
    loss_rate: float
    duplicate_rate: float
    reorder_rate: float
    delay_scale_ms: float
    drift_rates: tuple[float, ...]
    clock_offsets_ms: tuple[int, ...]
    link_faults: tuple[LinkFault, ...]
    crashes: tuple[Crash, ...]

    @property
    def instance_count(self) -> int:
        return self.validators + (1 if self.twin_groups is not None else 0)

    def describe(self) -> str:
        byzantine = ", ".join(f"val-{i}:{kind}" for i, kind in self.byzantine) or "none"
        return (
            f"faults [{', '.join(self.active) or 'none'}]; byzantine {byzantine}; "
            f"heal at {self.heal_ms} ms; {len(self.link_faults)} link faults; "
            f"{len(self.crashes)} crashes"
        )


def make_scenario(seed: int, validators: int, enabled: tuple[str, ...]) -> Scenario:
    rng = random.Random(f"coopledger-sim:{seed}:{validators}:scenario")
    active = tuple(
        k for k in FAULT_KINDS if k in enabled and rng.random() < FAULT_ACTIVE_PROBABILITY
    )
    heal_ms = rng.randrange(2_000, 8_000) if active else 0
    byzantine = _byzantine(rng, validators, active)
    twin_groups = None
    twin_of = next((i for i, kind in byzantine if kind == "twins"), None)
    instances = validators
    if twin_of is not None:
        others = [i for i in range(validators) if i != twin_of]
        rng.shuffle(others)
        cut = rng.randrange(1, len(others))
        twin_groups = (tuple(sorted(others[:cut])), tuple(sorted(others[cut:])))
        instances += 1
    return Scenario(
        seed=seed,
        validators=validators,
        active=active,
        byzantine=byzantine,
        twin_groups=twin_groups,
        heal_ms=heal_ms,
        loss_rate=rng.uniform(0.01, 0.25) if "loss" in active else 0.0,
        duplicate_rate=rng.uniform(0.01, 0.2) if "duplicate" in active else 0.0,
        reorder_rate=rng.uniform(0.05, 0.3) if "reorder" in active else 0.0,
        delay_scale_ms=rng.uniform(3.0, 30.0) if "delay" in active else 0.0,
        drift_rates=tuple(
            rng.uniform(0.85, 1.15) if "drift" in active else 1.0 for _ in range(instances)
        ),
        clock_offsets_ms=tuple(
            rng.randrange(-3_000, 3_000) if "drift" in active else 0 for _ in range(instances)
        ),
        link_faults=_link_faults(rng, instances, heal_ms, active),
        crashes=_crashes(rng, validators, heal_ms, active, {i for i, _ in byzantine}),
    )


def _byzantine(
    rng: random.Random, validators: int, active: tuple[str, ...]
) -> tuple[tuple[int, str], ...]:
    kinds = [k for k in BYZANTINE_FAULTS if k in active]
    if not kinds:
        return ()
    count = rng.randint(1, fault_tolerance(validators))
    chosen = sorted(rng.sample(range(validators), count))
    rng.shuffle(kinds)  # distinct behaviours while they last, in a random order
    behaviours: list[tuple[int, str]] = []
    for position, index in enumerate(chosen):
        kind = kinds[position] if position < len(kinds) else rng.choice(kinds)
        if kind == "twins" and any(k == "twins" for _, k in behaviours):
            kind = rng.choice([k for k in kinds if k != "twins"] or ["equivocate"])
        behaviours.append((index, kind))
    return tuple(behaviours)


def _link_faults(
    rng: random.Random, instances: int, heal_ms: int, active: tuple[str, ...]
) -> tuple[LinkFault, ...]:
    faults: list[LinkFault] = []
    everyone = list(range(instances))

    def both_ways(group_a: list[int], group_b: list[int]) -> tuple[tuple[int, int], ...]:
        return tuple((a, b) for a in group_a for b in group_b) + tuple(
            (b, a) for a in group_a for b in group_b
        )

    if "partition" in active:
        for _ in range(rng.randint(1, 3)):
            start = rng.randrange(0, heal_ms - 500)
            end = min(heal_ms, start + rng.randrange(300, 4_000))
            kind = rng.choice(("halves", "isolate", "asymmetric"))
            if kind == "halves":
                shuffled = everyone[:]
                rng.shuffle(shuffled)
                half = len(shuffled) // 2
                pairs = both_ways(shuffled[:half], shuffled[half:])
            elif kind == "isolate":
                lonely = rng.choice(everyone)
                pairs = both_ways([lonely], [i for i in everyone if i != lonely])
            else:
                lonely = rng.choice(everyone)
                others = [i for i in everyone if i != lonely]
                outgoing = rng.random() < 0.5
                pairs = tuple((lonely, o) if outgoing else (o, lonely) for o in others)
            faults.append(LinkFault(f"partition-{kind}", start, end, pairs))
    if "clog" in active:
        # Swizzle-clogging (FoundationDB): stop the links of nodes one by one, then restore
        # them in a different random order.
        order = everyone[:]
        rng.shuffle(order)
        clogged = order[: rng.randint(1, len(order))]
        restore = clogged[:]
        rng.shuffle(restore)
        step = rng.randrange(50, 400)
        start = rng.randrange(0, max(1, heal_ms // 2))
        restore_start = start + step * len(clogged) + rng.randrange(0, 1_000)
        for position, node in enumerate(clogged):
            begin = start + step * position
            end = min(heal_ms, restore_start + step * restore.index(node))
            if end > begin:
                pairs = both_ways([node], [i for i in everyone if i != node])
                faults.append(LinkFault("clog", begin, end, pairs))
    return tuple(faults)


def _crashes(
    rng: random.Random,
    validators: int,
    heal_ms: int,
    active: tuple[str, ...],
    byzantine: set[int],
) -> tuple[Crash, ...]:
    if "crash" not in active:
        return ()
    honest = [i for i in range(validators) if i not in byzantine]
    crashes = []
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(0, heal_ms - 100)
        down = rng.choice((rng.randrange(5, 100), rng.randrange(100, 3_000)))
        crashes.append(Crash(rng.choice(honest), at, down, rng.random() < 0.5))
    return tuple(sorted(crashes, key=lambda c: (c.at_ms, c.instance)))

"""What every simulation must satisfy, checked after the run from what was recorded.

* agreement — no two honest validators commit different blocks at one height;
* validity — every committed block was proposed by the rightful proposer of some round,
  and every commit certificate verifies (:func:`node.block.verify_commit`, real Ed25519);
* integrity — no transaction committed twice, none that no client submitted;
* no-regression — each honest validator commits heights 1, 2, 3, ... once each, across
  restarts;
* state-root — honest validators compute identical state roots at each height;
* liveness — after the faults heal, every honest validator commits within a bound;
* double-sign — no honest validator signs two different messages for one (height, round,
  step): the safety record survives crashes;
* lock — an honest validator prevotes against its lock only with a newer proof-of-lock
  (Algorithm 1, lines 22 and 28);
* proposal — an honest validator prevotes a block only if the round's proposer proposed it.

The last three look inside the protocol, as Jepsen's and Twins' checkers do: they catch a
broken rule even in a run where the fault schedule happened not to turn it into a fork.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from consensus.messages import Message, Precommit, Prevote, Proposal, SignatureVerifier
from node.block import Commit, verify_commit
from node.errors import ProofError
from node.genesis import Genesis

LIVENESS_BOUND_MS = 40_000
"""After healing, every honest validator must commit within this much virtual time. Round
timeouts grow by 100 ms a round, so even after a long partition a few rounds suffice."""


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    detail: str
    height: int | None = None


@dataclass(slots=True)
class CommitRecord:
    instance: int
    height: int
    block_hash: str
    commit: Commit
    state_root: str
    transactions: tuple[object, ...]
    time_ms: int


@dataclass(slots=True)
class Recorder:
    """Collects, during a run, what the checkers need."""

    genesis: Genesis
    verifier: SignatureVerifier
    honest_validators: frozenset[str]
    honest_instances: tuple[int, ...]
    proposer: Callable[[int, int], str]
    commits: dict[int, list[CommitRecord]] = field(default_factory=dict)
    # (validator, kind, height, round) -> hashes signed, by honest validators only
    signed: dict[tuple[str, str, int, int], list[str | None]] = field(default_factory=dict)
    # per honest validator, its votes in the order it sent them: (kind, height, round, hash)
    votes_sent: dict[str, list[tuple[str, int, int, str | None]]] = field(default_factory=dict)
    proposed: set[tuple[int, int, str]] = field(default_factory=set)
    prevoters: dict[tuple[int, int, str | None], set[str]] = field(default_factory=dict)
    seen: set[tuple[object, ...]] = field(default_factory=set)

    def on_send(self, message: Message, honest_sender: bool) -> None:
        """Called for every message put on the network (each distinct message once)."""
        pol = message.pol_round if isinstance(message, Proposal) else -1
        key = (
            message.KIND,
            message.height,
            message.round,
            pol,
            message.block_hash,
            message.signer,
            message.signature,
        )
        if key in self.seen:
            return
        self.seen.add(key)
        # Honest senders sign with their own key; anything else must prove authenticity.
        authentic = honest_sender or self.verifier.check(message)
        if not authentic:
            return
        signer = message.signer
        if honest_sender and signer in self.honest_validators:
            slot = (signer, message.KIND, message.height, message.round)
            hashes = self.signed.setdefault(slot, [])
            if message.block_hash not in hashes:
                hashes.append(message.block_hash)
            if not isinstance(message, Proposal):
                self.votes_sent.setdefault(signer, []).append(
                    (message.KIND, message.height, message.round, message.block_hash)
                )
        if isinstance(message, Proposal):
            if signer == self.proposer(message.height, message.round):
                self.proposed.add((message.height, message.round, message.block_hash))
        elif isinstance(message, Prevote):
            triple = (message.height, message.round, message.block_hash)
            self.prevoters.setdefault(triple, set()).add(signer)
        else:
            assert isinstance(message, Precommit)

    def on_commit(self, record: CommitRecord) -> None:
        self.commits.setdefault(record.instance, []).append(record)


def check_all(recorder: Recorder, heal_ms: int, end_ms: int) -> list[Violation]:
    violations: list[Violation] = []
    violations += check_agreement(recorder)
    violations += check_validity(recorder)
    violations += check_integrity(recorder)
    violations += check_no_regression(recorder)
    violations += check_state_roots(recorder)
    violations += check_double_sign(recorder)
    violations += check_lock(recorder)
    violations += check_prevote_proposal(recorder)
    violations += check_liveness(recorder, heal_ms, end_ms)
    return violations


def _honest_commits(recorder: Recorder) -> list[CommitRecord]:
    return [
        record
        for instance in recorder.honest_instances
        for record in recorder.commits.get(instance, [])
    ]


def check_agreement(recorder: Recorder) -> list[Violation]:
    decided: dict[int, CommitRecord] = {}
    violations = []
    for record in _honest_commits(recorder):
        first = decided.setdefault(record.height, record)
        if first.block_hash != record.block_hash:
            violations.append(
                Violation(
                    "agreement",
                    f"instance {first.instance} committed {first.block_hash[:12]} and instance "
                    f"{record.instance} committed {record.block_hash[:12]}",
                    record.height,
                )
            )
    return violations


def check_validity(recorder: Recorder) -> list[Violation]:
    violations = []
    checked: set[tuple[object, ...]] = set()
    proposed_hashes = {(h, block_hash) for h, _, block_hash in recorder.proposed}
    for record in _honest_commits(recorder):
        if (record.height, record.block_hash) not in proposed_hashes:
            violations.append(
                Violation("validity", f"{record.block_hash[:12]} was never proposed", record.height)
            )
        commit = record.commit
        key = (
            record.height,
            record.block_hash,
            commit["round"],
            tuple((s["validator"], s["signature"]) for s in commit["signatures"]),
        )
        if key in checked:
            continue
        checked.add(key)
        try:
            verify_commit(recorder.genesis, commit, record.block_hash, record.height)
        except ProofError as error:
            violations.append(
                Violation(
                    "validity", f"instance {record.instance}: bad commit: {error}", record.height
                )
            )
    return violations


def check_integrity(recorder: Recorder) -> list[Violation]:
    violations = []
    for instance in recorder.honest_instances:
        seen: set[object] = set()
        for record in recorder.commits.get(instance, []):
            for tx in record.transactions:
                if tx in seen:
                    violations.append(
                        Violation(
                            "integrity", f"instance {instance}: {tx} committed twice", record.height
                        )
                    )
                seen.add(tx)
    return violations


def check_submitted(recorder: Recorder, submitted: set[str]) -> list[Violation]:
    return [
        Violation(
            "integrity", f"instance {record.instance}: {tx!r} was never submitted", record.height
        )
        for record in _honest_commits(recorder)
        for tx in record.transactions
        if tx not in submitted
    ]


def check_no_regression(recorder: Recorder) -> list[Violation]:
    violations = []
    for instance in recorder.honest_instances:
        expected = 1
        for record in recorder.commits.get(instance, []):
            if record.height != expected:
                violations.append(
                    Violation(
                        "no-regression",
                        f"instance {instance} committed height {record.height} "
                        f"after {expected - 1}",
                        record.height,
                    )
                )
            expected = record.height + 1
    return violations


def check_state_roots(recorder: Recorder) -> list[Violation]:
    roots: dict[int, CommitRecord] = {}
    violations = []
    for record in _honest_commits(recorder):
        first = roots.setdefault(record.height, record)
        if first.state_root != record.state_root and first.block_hash == record.block_hash:
            violations.append(
                Violation(
                    "state-root",
                    f"instances {first.instance} and {record.instance} disagree on the state",
                    record.height,
                )
            )
    return violations


def check_double_sign(recorder: Recorder) -> list[Violation]:
    return [
        Violation(
            "double-sign",
            f"honest {validator} signed {kind} for {[h and h[:12] for h in hashes]} "
            f"in round {round_}",
            height,
        )
        for (validator, kind, height, round_), hashes in recorder.signed.items()
        if len(hashes) > 1
    ]


def _polka(recorder: Recorder, height: int, rounds: range, block_hash: str) -> bool:
    quorum = recorder.genesis.quorum
    return any(len(recorder.prevoters.get((height, r, block_hash), ())) >= quorum for r in rounds)


def check_lock(recorder: Recorder) -> list[Violation]:
    """A validator's lock is its last non-nil precommit (line 38); a prevote for another
    block in a later round needs 2f+1 prevotes for that block since the lock (line 28)."""
    violations = []
    for validator, votes in recorder.votes_sent.items():
        locks: dict[int, tuple[int, str]] = {}
        for kind, height, round_, block_hash in votes:
            lock = locks.get(height)
            if kind == "precommit":
                if block_hash is not None and (lock is None or round_ > lock[0]):
                    locks[height] = (round_, block_hash)
                continue
            if block_hash is None or lock is None or lock[1] == block_hash or lock[0] >= round_:
                continue
            if not _polka(recorder, height, range(lock[0], round_), block_hash):
                violations.append(
                    Violation(
                        "lock",
                        f"honest {validator} locked on {lock[1][:12]} in round {lock[0]} "
                        f"prevoted {block_hash[:12]} in round {round_} without a proof-of-lock",
                        height,
                    )
                )
    return violations


def check_prevote_proposal(recorder: Recorder) -> list[Violation]:
    violations = []
    for validator, votes in recorder.votes_sent.items():
        for kind, height, round_, block_hash in votes:
            if kind != "prevote" or block_hash is None:
                continue
            if (height, round_, block_hash) not in recorder.proposed:
                violations.append(
                    Violation(
                        "proposal",
                        f"honest {validator} prevoted {block_hash[:12]} in round {round_}, "
                        "which the round's proposer did not propose",
                        height,
                    )
                )
    return violations


def check_liveness(recorder: Recorder, heal_ms: int, end_ms: int) -> list[Violation]:
    """Every honest validator commits in [heal, heal + bound]. A run that stopped earlier
    stopped because every honest validator had already committed after healing."""
    deadline = heal_ms + LIVENESS_BOUND_MS
    if end_ms < deadline:
        return []
    violations = []
    for instance in recorder.honest_instances:
        records = recorder.commits.get(instance, [])
        if not any(heal_ms <= r.time_ms <= deadline for r in records):
            last = records[-1].height if records else 0
            violations.append(
                Violation(
                    "liveness",
                    f"instance {instance} committed nothing in the {LIVENESS_BOUND_MS} ms "
                    f"after healing (last height {last})",
                )
            )
    return violations

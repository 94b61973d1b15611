"""Simulated validators: an honest one driving the real core, and Byzantine variants.

An honest :class:`SimNode` is exactly what a runtime does: it loops on the driver's
``Ready``, executes commits, persists the safety record, then sends, schedules timers and
answers the application's questions. A crash throws away everything but its
:class:`Storage`. A :class:`ByzantineNode` runs the same honest core underneath (so it
keeps the protocol's timing) and corrupts what it sends.
"""

from __future__ import annotations

import dataclasses
import random
from typing import TYPE_CHECKING

from consensus.application import serve
from consensus.core import Config, Resume
from consensus.driver import Driver, Ready
from consensus.events import BlockSynced, Event, Receive, Start, TimeoutFired
from consensus.messages import (
    Block,
    Message,
    Proposal,
    Vote,
    proposal_payload,
    vote_payload,
)
from consensus.simulator.world import GENESIS_TIME_MS, Storage, ToyApplication, validator_key
from consensus.types import Height, Round, TimerKind, ValidatorId

if TYPE_CHECKING:
    from consensus.simulator.run import Simulation
    from node.block import Commit


class SimNode:
    """One validator instance in the simulation."""

    honest = True

    def __init__(self, sim: Simulation, index: int, validator_index: int) -> None:
        self.sim = sim
        self.index = index
        self.validator_index = validator_index
        self.validator_id = ValidatorId(f"val-{validator_index}")
        self.key = validator_key(validator_index)
        self.storage = Storage()
        self.drift_rate = sim.scenario.drift_rates[index]
        self.clock_offset_ms = sim.scenario.clock_offsets_ms[index]
        self.up = False
        self.incarnation = 0
        self.crash_before_send = False
        self.driver: Driver | None = None
        self.app = self._new_app()

    def _new_app(self) -> ToyApplication:
        return ToyApplication(self.sim.genesis, self.storage, self.sim.submitted, self.clock_ms)

    def clock_ms(self) -> int:
        """The validator's local clock: drifting rate and offset (block timestamps only)."""
        return GENESIS_TIME_MS + int(self.sim.now * self.drift_rate) + self.clock_offset_ms

    @property
    def height(self) -> Height:
        return self.storage.height

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        record = self.storage.record
        if self.sim.mutant == "forget-record" and self.incarnation > 0:
            record = None  # the mutant: a restart that forgot what it signed
        config = Config.from_genesis(self.sim.genesis, self.validator_id)
        core = self.sim.core_class(
            config,
            self.key,
            self.sim.verifier,
            Resume(height=Height(self.storage.height + 1), record=record),
        )
        self.driver = Driver(core)
        self.app = self._new_app()
        self.up = True
        self.incarnation += 1
        self.crash_before_send = False
        self.step(Start())

    def crash(self) -> None:
        self.up = False
        self.driver = None
        self.sim.log(f"crash {self.index} at height {self.height + 1}")

    # --- events --------------------------------------------------------------------------

    def step(self, event: Event) -> None:
        driver = self.driver
        if driver is None:
            return
        driver.step(event)
        while self.up and driver.has_ready():
            ready = driver.ready()
            events = self.handle(ready)
            if not self.up:
                return
            driver.advance(ready)
            for follow_up in events:
                driver.step(follow_up)

    def receive(self, message: Message) -> None:
        if self.up:
            self.step(Receive(message=message))

    def timer(self, incarnation: int, event: TimeoutFired) -> None:
        if self.up and incarnation == self.incarnation:
            self.step(event)

    def synced(self, blocks: list[tuple[Block, Commit]]) -> None:
        for block, commit in blocks:
            if not self.up or block.height != self.storage.height + 1:
                continue
            self.step(BlockSynced(block=block, commit=commit))

    def add_transaction(self, tx: str) -> None:
        if self.up:
            self.app.add_transaction(tx)

    # --- the runtime's duties, in the order Ready prescribes --------------------------------

    def handle(self, ready: Ready) -> list[Event]:
        events = serve(self.app, ready)
        for decided in ready.commits:
            self.sim.on_commit(self, decided.block, decided.commit)
        if ready.persist is not None:
            self.storage.record = ready.persist
        if self.crash_before_send and ready.messages:
            for message in ready.messages:
                self.sim.recorder.on_send(message, self.honest)  # signed, never sent
            self.sim.crash_now(self)
            return []
        for message in ready.messages:
            self.send(message)
        for timeout in ready.timeouts:
            delay = int(timeout.duration_ms * self.drift_rate)
            event = TimeoutFired(height=timeout.height, round=timeout.round, kind=timeout.kind)
            self.sim.schedule(delay, self.timer, self.incarnation, event)
            if timeout.kind == TimerKind.PROPOSE:
                self.entered_round(timeout.height, timeout.round)
        for fetch in ready.fetches:
            self.sim.fetch(self, fetch.peer, fetch.from_height)
        return events

    def send(self, message: Message) -> None:
        self.sim.broadcast(self, message)

    def entered_round(self, height: Height, round_: Round) -> None:
        """Hook for Byzantine behaviour at the start of each round."""


class ByzantineNode(SimNode):
    """A validator that lies; ``behaviour`` says how (scenario.BYZANTINE_FAULTS)."""

    honest = False

    def __init__(self, sim: Simulation, index: int, validator_index: int, behaviour: str) -> None:
        super().__init__(sim, index, validator_index)
        self.behaviour = behaviour
        self.rng = random.Random(f"coopledger-sim:{sim.scenario.seed}:byzantine:{index}")

    def _sign_proposal(self, block: Block, round_: Round, pol_round: Round) -> Proposal:
        payload = proposal_payload(
            self.sim.genesis.chain_id, block.height, round_, pol_round, block.hash
        )
        return Proposal(
            height=block.height,
            round=round_,
            pol_round=pol_round,
            block=block,
            proposer=self.validator_id,
            signature=self.key.sign("proposal", payload),
        )

    def _sign_vote(self, vote: Vote, block_hash: str | None) -> Vote:
        payload = vote_payload(self.sim.genesis.chain_id, vote.height, vote.round, block_hash)
        return type(vote)(
            height=vote.height,
            round=vote.round,
            block_hash=block_hash,
            validator=self.validator_id,
            signature=self.key.sign(vote.KIND, payload),
        )

    def _split(self) -> tuple[list[int], list[int]]:
        peers = self.sim.peers_of(self.index)
        shuffled = peers[:]
        self.rng.shuffle(shuffled)
        half = len(shuffled) // 2
        return shuffled[:half], shuffled[half:]

    def _random_hash(self) -> str:
        return self.rng.getrandbits(256).to_bytes(32, "big").hex()

    def send(self, message: Message) -> None:
        behaviour = self.behaviour
        if behaviour == "equivocate" and isinstance(message, Proposal):
            # Two different blocks for one round, one to each half of the validators.
            other = self.app.build_block(
                message.height, message.round, self.validator_id, skew_ms=1 + self.rng.randrange(9)
            )
            twin = self._sign_proposal(other, message.round, NIL)
            first, second = self._split()
            self.sim.send_to(self, first, message)
            self.sim.send_to(self, second, twin)
        elif behaviour == "double-vote" and not isinstance(message, Proposal):
            known = self.sim.known_hashes(message.height, message.round)
            alternatives = [h for h in known if h != message.block_hash]
            if message.block_hash is not None:
                alternatives.append(None)  # type: ignore[arg-type]
            other_hash = self.rng.choice(alternatives) if alternatives else self._random_hash()
            first, second = self._split()
            self.sim.send_to(self, first, message)
            self.sim.send_to(self, second, self._sign_vote(message, other_hash))
        elif behaviour == "unknown-block" and not isinstance(message, Proposal):
            if self.rng.random() < 0.5:
                self.sim.broadcast(self, self._sign_vote(message, self._random_hash()))
            else:
                self.sim.broadcast(self, message)
        elif behaviour == "bad-signature":
            self.sim.broadcast(self, _corrupt(message))
            forged_as = self.rng.choice(self.sim.validator_ids)
            self.sim.broadcast(self, _forge(message, forged_as))
            if self.rng.random() < 0.5:
                self.sim.broadcast(self, message)
        else:
            self.sim.broadcast(self, message)

    def entered_round(self, height: Height, round_: Round) -> None:
        """An equivocator also proposes out of turn: a proposal no one should accept."""
        if self.behaviour != "equivocate" or self.driver is None:
            return
        if self.driver.core.proposer(height, round_) == self.validator_id:
            return
        if height != self.storage.height + 1 or self.rng.random() < 0.3:
            return
        block = self.app.build_block(
            height, round_, self.validator_id, skew_ms=self.rng.randrange(50)
        )
        self.sim.broadcast(self, self._sign_proposal(block, round_, NIL))


NIL = Round(-1)


def _corrupt(message: Message) -> Message:
    flipped = format(int(message.signature[:2], 16) ^ 0x01, "02x") + message.signature[2:]
    return dataclasses.replace(message, signature=flipped)


def _forge(message: Message, validator: ValidatorId) -> Message:
    if isinstance(message, Proposal):
        return dataclasses.replace(message, proposer=validator)
    return dataclasses.replace(message, validator=validator)

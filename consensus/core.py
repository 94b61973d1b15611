"""The Tendermint consensus core: a pure state machine, events in, actions out.

Rules ("The latest gossip on BFT consensus", Buchman, Kwon, Milosevic 2018, Algorithm 1;
line numbers below are the paper's). n = 3f + 1 equal-weight validators fixed at genesis;
a quorum is 2f + 1 (:func:`node.genesis.quorum`).

* StartRound (line 11). The proposer of (h, r) is ``validators[(h + r) mod n]``. It
  proposes its ``valid_block`` if it has one, else asks the application to build a block.
  Everyone schedules ``timeout_propose(r)``.
* Line 22. On the proposer's PROPOSAL(h, r, v, -1) at step propose: prevote v if v is valid
  and we are not locked or locked on v; else prevote nil.
* Line 28. On PROPOSAL(h, r, v, vr) with 0 <= vr < r and 2f+1 PREVOTE(h, vr, v) at step
  propose: prevote v if v is valid and ``locked_round <= vr`` or we are locked on v.
* Line 34. On 2f+1 PREVOTE(h, r, *) at step prevote, the first time: schedule
  ``timeout_prevote(r)``.
* Line 36. On PROPOSAL(h, r, v, *) and 2f+1 PREVOTE(h, r, v) with v valid and step >=
  prevote, the first time: if at step prevote, lock v and precommit v; in any case
  ``valid_block = v``.
* Line 44. On 2f+1 PREVOTE(h, r, nil) at step prevote: precommit nil.
* Line 47. On 2f+1 PRECOMMIT(h, r, *), the first time: schedule ``timeout_precommit(r)``.
* Line 49. On PROPOSAL(h, r', v, *) and 2f+1 PRECOMMIT(h, r', v) for any round r', v
  valid: decide v, emit :class:`CommitBlock`, start height h + 1.
* Line 55. On messages of f + 1 distinct validators in a round r' > r: start round r'.
* Lines 57-65. Timeouts: at step propose prevote nil; at step prevote precommit nil; on
  precommit timeout start round r + 1. Timeouts grow by ``timeout_delta_ms`` per round.

Theory of operation. :meth:`Consensus.step` takes one :class:`Event`, updates the state,
re-evaluates the "upon" rules above until none fires, and returns the actions in the order
they arose. A message counts only after its signer is a genesis validator and its
signature checks (:class:`SignatureVerifier`). Before the core signs anything it consults
and advances its :class:`SafetyRecord` and emits :class:`Persist` ahead of the
:class:`Broadcast`; a restarted core resumes from that record and never signs against it.
Additions to the paper, each explained where it is made: a retransmit timer (the paper
assumes gossip), buffering of the next height's messages, and catch-up requests when
messages of a later height show that this validator fell behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from consensus.events import (
    Action,
    BlockBuilt,
    BlockSynced,
    BlockValidated,
    Broadcast,
    BuildBlock,
    CommitBlock,
    Event,
    FetchBlocks,
    Persist,
    Receive,
    ScheduleTimeout,
    Start,
    TimeoutFired,
    ValidateBlock,
)
from consensus.messages import (
    Block,
    Message,
    Precommit,
    Prevote,
    Proposal,
    SignatureVerifier,
    Signer,
    Vote,
    proposal_payload,
    vote_payload,
)
from consensus.safety import SafetyRecord
from consensus.types import NIL_ROUND, Height, Round, Step, TimerKind, ValidatorId
from consensus.votes import VoteSet
from node.block import Commit, CommitSignature, verify_commit
from node.errors import ProofError
from node.genesis import Genesis, fault_tolerance, quorum
from node.invariant import invariant

PROPOSALS_PER_ROUND_MAX = 2
"""Distinct proposals kept per round. An honest proposer sends one; a second one is kept so
that equivocation is visible, further ones only cost memory."""

FUTURE_ROUNDS_PER_VALIDATOR_MAX = 2
"""Rounds above ours in which one validator's messages are kept (as CometBFT's
``peerCatchupRounds``): enough for the f + 1 round-skip rule, while a Byzantine validator
cannot make us store votes for unboundedly many rounds."""

NEXT_HEIGHT_MESSAGES_PER_VALIDATOR = 4
"""Messages of height h + 1 buffered per validator while we finish height h (a proposal and
two votes, plus one retransmission)."""

EVIDENCE_MAX = 64
"""Equivocations remembered per height, for reporting; beyond this they are only dropped."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything fixed for a validator's lifetime: genesis, own id and timing."""

    genesis: Genesis
    validator_id: ValidatorId
    timeout_propose_ms: int
    timeout_prevote_ms: int
    timeout_precommit_ms: int
    timeout_delta_ms: int

    def __post_init__(self) -> None:
        invariant(
            self.genesis.validator(self.validator_id) is not None,
            f"{self.validator_id} is not a genesis validator",
        )

    @classmethod
    def from_genesis(cls, genesis: Genesis, validator_id: ValidatorId) -> Config:
        params = genesis.params
        return cls(
            genesis=genesis,
            validator_id=validator_id,
            timeout_propose_ms=params["timeout_propose_ms"],
            timeout_prevote_ms=params["timeout_prevote_ms"],
            timeout_precommit_ms=params["timeout_precommit_ms"],
            timeout_delta_ms=params["timeout_delta_ms"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume:
    """Where a (re)started core begins: the first height not yet committed, and the last
    safety record the runtime persisted (``None`` on first start)."""

    height: Height
    record: SafetyRecord | None = None


class _HeightState:
    """Everything learned about one height; dropped when the height is decided."""

    __slots__ = (
        "blocks",
        "evidence",
        "precommits",
        "prevotes",
        "proposals",
        "round_senders",
        "validation_requested",
        "verdicts",
    )

    def __init__(self) -> None:
        self.proposals: dict[Round, list[Proposal]] = {}
        self.blocks: dict[str, Block] = {}
        self.verdicts: dict[str, bool] = {}
        self.validation_requested: set[str] = set()
        self.prevotes: dict[Round, VoteSet] = {}
        self.precommits: dict[Round, VoteSet] = {}
        self.round_senders: dict[Round, set[ValidatorId]] = {}
        self.evidence: list[tuple[Vote, Vote]] = []

    def votes(self, message: Vote) -> dict[Round, VoteSet]:
        return self.prevotes if isinstance(message, Prevote) else self.precommits


class Consensus:
    """One validator's view of Algorithm 1. Drive it with :meth:`step`."""

    def __init__(
        self,
        config: Config,
        signer: Signer,
        verifier: SignatureVerifier,
        resume: Resume,
    ) -> None:
        invariant(resume.height >= 1, "heights start at 1")
        self.config = config
        self._signer = signer
        self._verifier = verifier
        self._validators = tuple(ValidatorId(v.id) for v in config.genesis.validators)
        self._quorum = quorum(len(self._validators))
        self._faulty_max = fault_tolerance(len(self._validators))
        self._record = resume.record
        self.height = resume.height
        self.round = NIL_ROUND
        self.step_ = Step.PROPOSE
        self._locked_round = NIL_ROUND
        self._locked_block: Block | None = None
        self._valid_round = NIL_ROUND
        self._valid_block: Block | None = None
        self._state = _HeightState()
        self._own_messages: list[Message] = []
        self._own_messages_previous_round: list[Message] = []
        self._signed_votes: list[Vote] = []
        self._done_once: set[tuple[int, Round]] = set()
        self._next_height: dict[ValidatorId, list[Message]] = {}
        self._heights_seen: dict[ValidatorId, Height] = {}
        self._fetched_for: Height | None = None
        self._fetch_attempts = 0
        self._started = False
        self._actions: list[Action] = []
        self.signatures_refused = 0
        """Signatures the safety record refused (a restarted validator avoiding equivocation)."""

    # --- public surface ------------------------------------------------------------------

    def step(self, event: Event) -> list[Action]:
        """Apply ``event``; return the actions it caused, in order."""
        match event:
            case Start():
                invariant(not self._started, "Start is stepped exactly once")
                self._started = True
                self._resume()
            case Receive(message=message):
                self._on_message(message)
            case TimeoutFired():
                self._on_timeout(event)
            case BlockBuilt():
                self._on_block_built(event)
            case BlockValidated():
                self._on_block_validated(event)
            case BlockSynced():
                self._on_block_synced(event)
            case _:
                assert_never(event)
        actions, self._actions = self._actions, []
        return actions

    def proposer(self, height: Height, round_: Round) -> ValidatorId:
        """Proposer rotation: deterministic from (height, round) over the genesis order."""
        return self._validators[(height + round_) % len(self._validators)]

    @property
    def locked_round(self) -> Round:
        return self._locked_round

    @property
    def evidence(self) -> list[tuple[Vote, Vote]]:
        """Pairs of conflicting votes seen at the current height (bounded)."""
        return list(self._state.evidence)

    # --- seams the simulator's mutants override (each is one rule of the paper) ------------

    def _votes_needed(self) -> int:
        """2f + 1: the quorum of every "upon 2f+1" rule."""
        return self._quorum

    def _lock_permits(self, block: Block, pol_round: Round) -> bool:
        """Lines 22 and 28: a locked validator prevotes only its locked block, unless the
        proposal carries a proof-of-lock from round ``pol_round >= locked_round``."""
        if self._locked_block is None:
            return True
        if self._locked_block.hash == block.hash:
            return True
        return pol_round != NIL_ROUND and self._locked_round <= pol_round

    def _from_proposer(self, proposal: Proposal) -> bool:
        """Only the proposer of (h, r) may propose in round r (line 22: "from proposer")."""
        return proposal.proposer == self.proposer(proposal.height, proposal.round)

    # --- timing ------------------------------------------------------------------------

    def _timeout_ms(self, kind: TimerKind, round_: Round) -> int:
        """Timeouts grow linearly with the round, so after GST they outgrow the delay."""
        config = self.config
        base = {
            TimerKind.PROPOSE: config.timeout_propose_ms,
            TimerKind.PREVOTE: config.timeout_prevote_ms,
            TimerKind.PRECOMMIT: config.timeout_precommit_ms,
            # Our own messages are re-sent about once per propose timeout: often enough to
            # heal a lossy link within a round, rarely enough to cost little when all is well.
            TimerKind.RETRANSMIT: config.timeout_propose_ms,
        }[kind]
        return base + round_ * config.timeout_delta_ms

    def _schedule(self, kind: TimerKind) -> None:
        self._actions.append(
            ScheduleTimeout(
                height=self.height,
                round=self.round,
                kind=kind,
                duration_ms=self._timeout_ms(kind, self.round),
            )
        )

    # --- starting heights and rounds -----------------------------------------------------

    def _resume(self) -> None:
        record = self._record
        if record is None or record.height != self.height:
            self._start_round(Round(0))
            return
        # Resume where the record says we were, with the lock we held: re-entering an
        # earlier step would only make us try to sign what the record forbids.
        self._locked_round = record.locked_round
        self._locked_block = record.locked_block
        self._valid_round = record.locked_round
        self._valid_block = record.locked_block
        if record.locked_block is not None:
            self._state.blocks[record.locked_block.hash] = record.locked_block
            self._state.verdicts[record.locked_block.hash] = True
        self.round = record.round
        self.step_ = record.step
        self._schedule(TimerKind.PROPOSE)
        self._schedule(TimerKind.RETRANSMIT)
        # The votes we signed in this round and the one before may never have left, and
        # validators still in those rounds may need them (line 34 and line 47 count "any"
        # votes): count them again and send them again, the identical signed bytes.
        for vote in record.signed_votes:
            self._signed_votes.append(vote)
            if vote.round == self.round:
                self._own_messages.append(vote)
            else:
                self._own_messages_previous_round.append(vote)
            self._count_vote(vote)
            self._actions.append(Broadcast(message=vote))
        self._evaluate({self.round})

    def _start_round(self, round_: Round) -> None:
        """StartRound(round) of Algorithm 1 (line 11)."""
        if round_ <= self.round:
            return
        self.round = round_
        self.step_ = Step.PROPOSE
        self._own_messages_previous_round = self._own_messages
        self._own_messages = []
        self._schedule(TimerKind.PROPOSE)
        self._schedule(TimerKind.RETRANSMIT)
        if self.proposer(self.height, round_) == self.config.validator_id:
            if self._valid_block is not None:
                self._propose(self._valid_block, self._valid_round)
            else:
                self._actions.append(
                    BuildBlock(height=self.height, round=round_, proposer=self.config.validator_id)
                )
        self._evaluate({round_})

    def _start_height(self, height: Height) -> None:
        self.height = height
        self.round = NIL_ROUND
        self._locked_round = NIL_ROUND
        self._locked_block = None
        self._valid_round = NIL_ROUND
        self._valid_block = None
        self._state = _HeightState()
        self._done_once = set()
        self._signed_votes = []
        buffered = self._next_height
        self._next_height = {}
        self._start_round(Round(0))
        for messages in buffered.values():
            for message in messages:
                if self.height != height:
                    return
                self._on_message(message)

    # --- signing -----------------------------------------------------------------------

    def _may_sign(self, round_: Round, step: Step, block_hash: str | None) -> bool:
        record = self._record
        if record is not None and record.conflicts(self.height, round_, step, block_hash):
            self.signatures_refused += 1
            return False
        return True

    def _persist(self, step: Step, block_hash: str | None) -> None:
        """Advance the safety record to what was just signed; Persist precedes Broadcast."""
        recent = Round(self.round - 1)
        self._signed_votes = [v for v in self._signed_votes if v.round >= recent]
        self._record = SafetyRecord(
            height=self.height,
            round=self.round,
            step=step,
            block_hash=block_hash,
            locked_round=self._locked_round,
            locked_block=self._locked_block,
            signed_votes=tuple(self._signed_votes),
        )
        self._actions.append(Persist(record=self._record))

    def _sign_vote(self, vote_type: type[Vote], block_hash: str | None) -> Vote | None:
        step = Step.PREVOTE if vote_type is Prevote else Step.PRECOMMIT
        if not self._may_sign(self.round, step, block_hash):
            return None
        payload = vote_payload(self._verifier.chain_id, self.height, self.round, block_hash)
        vote = vote_type(
            height=self.height,
            round=self.round,
            block_hash=block_hash,
            validator=self.config.validator_id,
            signature=self._signer.sign(vote_type.KIND, payload),
        )
        self._signed_votes.append(vote)
        self._persist(step, block_hash)
        return vote

    def _propose(self, block: Block, pol_round: Round) -> None:
        if not self._may_sign(self.round, Step.PROPOSE, block.hash):
            return
        payload = proposal_payload(
            self._verifier.chain_id, self.height, self.round, pol_round, block.hash
        )
        proposal = Proposal(
            height=self.height,
            round=self.round,
            pol_round=pol_round,
            block=block,
            proposer=self.config.validator_id,
            signature=self._signer.sign("proposal", payload),
        )
        self._persist(Step.PROPOSE, block.hash)
        self._state.verdicts.setdefault(block.hash, True)
        self._send_own(proposal)

    def _send_own(self, message: Message) -> None:
        """Broadcast a message we signed, and count it as if received."""
        self._own_messages.append(message)
        self._actions.append(Broadcast(message=message))
        if isinstance(message, Proposal):
            self._state.proposals.setdefault(message.round, []).append(message)
            self._record_message(message)
        else:
            self._count_vote(message)

    # --- steps (idempotent: each enter_ returns at once unless its guard holds) ------------

    def _enter_prevote(self, block_hash: str | None) -> None:
        if self.step_ != Step.PROPOSE:
            return
        self.step_ = Step.PREVOTE
        vote = self._sign_vote(Prevote, block_hash)
        if vote is not None:
            self._send_own(vote)

    def _enter_precommit(self, block: Block | None) -> None:
        if self.step_ != Step.PREVOTE:
            return
        self.step_ = Step.PRECOMMIT
        if block is not None:
            # Line 38: lock before signing, so the persisted record carries the lock.
            self._locked_round = self.round
            self._locked_block = block
        vote = self._sign_vote(Precommit, None if block is None else block.hash)
        if vote is not None:
            self._send_own(vote)

    def _decide(self, block: Block, commit: Commit) -> None:
        """Line 49: the block is decided; hand it over and start the next height."""
        self._actions.append(CommitBlock(height=self.height, block=block, commit=commit))
        self._start_height(Height(self.height + 1))

    # --- events --------------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        if message.height < self.height:
            return
        if message.height > self.height:
            self._on_later_height(message)
            return
        if message.round > self.round and not self._future_round_allowed(message):
            return
        if isinstance(message, Proposal):
            if not self._accept_proposal(message):
                return
        elif not self._accept_vote(message):
            return
        self._evaluate({message.round})

    def _on_later_height(self, message: Message) -> None:
        """Messages of a later height: buffer h + 1, and ask to catch up if further ahead."""
        if not self._verifier.check(message):
            return
        signer = message.signer
        if message.height > self._heights_seen.get(signer, Height(0)):
            self._heights_seen[signer] = message.height
        if message.height == self.height + 1:
            # Others decided our height and moved on; their next-height messages would be
            # lost if dropped now, so keep a few per validator for when we get there.
            buffered = self._next_height.setdefault(signer, [])
            if len(buffered) < NEXT_HEIGHT_MESSAGES_PER_VALIDATOR:
                buffered.append(message)
            return
        self._request_fetch(signer)

    def _request_fetch(self, peer: ValidatorId) -> None:
        if self._fetched_for == self.height:
            return
        self._fetched_for = self.height
        self._actions.append(FetchBlocks(peer=peer, from_height=self.height))

    def _future_round_allowed(self, message: Message) -> bool:
        senders_rounds = [
            r
            for r, senders in self._state.round_senders.items()
            if r > self.round and message.signer in senders
        ]
        return (
            message.round in senders_rounds or len(senders_rounds) < FUTURE_ROUNDS_PER_VALIDATOR_MAX
        )

    def _accept_proposal(self, proposal: Proposal) -> bool:
        state = self._state
        known = state.proposals.setdefault(proposal.round, [])
        if any(p.block_hash == proposal.block_hash for p in known):
            return False
        if len(known) >= PROPOSALS_PER_ROUND_MAX or not self._from_proposer(proposal):
            return False
        if not self._verifier.check(proposal):
            return False
        known.append(proposal)
        self._record_message(proposal)
        block = proposal.block
        state.blocks.setdefault(block.hash, block)
        if block.hash not in state.verdicts and block.hash not in state.validation_requested:
            state.validation_requested.add(block.hash)
            self._actions.append(ValidateBlock(height=self.height, block=block))
        return True

    def _accept_vote(self, vote: Vote) -> bool:
        votes = self._state.votes(vote)
        vote_set = votes.get(vote.round)
        if vote_set is not None and vote_set.contains(vote):
            return False  # a duplicate: already counted, no need to verify it again
        if not self._verifier.check(vote):
            return False
        self._count_vote(vote)
        return True

    def _count_vote(self, vote: Vote) -> None:
        vote_set = self._state.votes(vote).setdefault(vote.round, VoteSet())
        known = vote.block_hash is None or vote.block_hash in self._state.blocks
        earlier = vote_set.add(vote, conflicting_allowed=known)
        if earlier is not None and len(self._state.evidence) < EVIDENCE_MAX:
            self._state.evidence.append((earlier, vote))
        self._record_message(vote)

    def _record_message(self, message: Message) -> None:
        senders = self._state.round_senders.get(message.round)
        if senders is None:
            senders = self._state.round_senders[message.round] = set()
        senders.add(message.signer)

    def _on_timeout(self, event: TimeoutFired) -> None:
        if event.height != self.height or event.round != self.round:
            return
        match event.kind:
            case TimerKind.PROPOSE:
                if self.step_ == Step.PROPOSE:  # line 57
                    self._enter_prevote(None)
            case TimerKind.PREVOTE:
                if self.step_ == Step.PREVOTE:  # line 61
                    self._enter_precommit(None)
            case TimerKind.PRECOMMIT:
                self._start_round(Round(self.round + 1))  # line 65
                return
            case TimerKind.RETRANSMIT:
                self._retransmit()
                return
            case _:
                assert_never(event.kind)
        self._evaluate({self.round})

    def _retransmit(self) -> None:
        """Re-send this round's proposal and our own messages; catch up if others moved on.

        The paper assumes gossip delivers every message eventually after GST; a lost
        message is never re-sent by anyone else here, so each validator repeats its own.
        """
        state = self._state
        for proposal in state.proposals.get(self.round, []):
            if proposal not in self._own_messages:
                self._actions.append(Broadcast(message=proposal))
            # A proposal with a proof-of-lock round is only voted for by those who saw the
            # 2f+1 prevotes of that round (line 28): relay them, as Tendermint's gossip does.
            polka = state.prevotes.get(proposal.pol_round)
            if polka is not None:
                for vote in polka.votes_for(proposal.block_hash):
                    self._actions.append(Broadcast(message=vote))
        # The previous round's messages too: validators still in that round need our
        # precommit to reach 2f+1 and time out into ours (line 47).
        for message in self._own_messages_previous_round + self._own_messages:
            self._actions.append(Broadcast(message=message))
        ahead = [v for v, h in self._heights_seen.items() if h > self.height]
        if ahead:
            # Ask each validator seen ahead in turn: one that lies about its height (or
            # cannot answer) must not keep us from catching up.
            self._fetch_attempts += 1
            self._fetched_for = None
            self._request_fetch(ahead[self._fetch_attempts % len(ahead)])
        self._schedule(TimerKind.RETRANSMIT)

    def _on_block_built(self, event: BlockBuilt) -> None:
        if (
            event.height != self.height
            or event.round != self.round
            or self.step_ != Step.PROPOSE
            or self.proposer(self.height, self.round) != self.config.validator_id
            or event.block.height != self.height
            or any(isinstance(m, Proposal) for m in self._own_messages)
        ):
            return
        block = event.block
        self._state.blocks[block.hash] = block
        self._state.verdicts[block.hash] = True
        self._propose(block, NIL_ROUND)
        self._evaluate({self.round})

    def _on_block_validated(self, event: BlockValidated) -> None:
        state = self._state
        if event.height != self.height or event.block_hash not in state.validation_requested:
            return
        if event.block_hash in state.verdicts:
            return
        state.verdicts[event.block_hash] = event.valid
        self._evaluate(set(state.precommits) | {self.round})

    def _on_block_synced(self, event: BlockSynced) -> None:
        block = event.block
        if block.height != self.height:
            return
        try:
            commit = verify_commit(self.config.genesis, event.commit, block.hash, self.height)
        except ProofError:
            return
        self._decide(block, commit)

    # --- the "upon" rules ----------------------------------------------------------------

    def _evaluate(self, rounds: set[Round]) -> None:
        """Fire every rule that holds, until none does (or the height is decided)."""
        height = self.height
        for round_ in sorted(rounds):
            if self._try_decide(round_) or self.height != height:
                return
        self._try_skip_round()
        while self.height == height and self._fire_round_rule():
            pass

    def _try_decide(self, round_: Round) -> bool:
        """Line 49, for any round of this height."""
        precommits = self._state.precommits.get(round_)
        if precommits is None:
            return False
        for block_hash in precommits.hashes_with(self._votes_needed()):
            block = self._state.blocks.get(block_hash)
            if block is None or not self._state.verdicts.get(block_hash, False):
                continue
            self._decide(block, self._commit_certificate(round_, block_hash, precommits))
            return True
        return False

    def _commit_certificate(self, round_: Round, block_hash: str, votes: VoteSet) -> Commit:
        order = {v: i for i, v in enumerate(self._validators)}
        signers = sorted(votes.votes_for(block_hash), key=lambda v: order[v.validator])
        signatures: list[CommitSignature] = [
            {"validator": v.validator, "signature": v.signature} for v in signers
        ]
        return {
            "height": self.height,
            "round": round_,
            "block_hash": block_hash,
            "signatures": signatures,
        }

    def _try_skip_round(self) -> None:
        """Line 55: f + 1 validators are in a later round, so at least one honest one is."""
        later = [
            r
            for r, senders in self._state.round_senders.items()
            if r > self.round and len(senders) >= self._faulty_max + 1
        ]
        if later:
            self._start_round(max(later))

    def _fire_round_rule(self) -> bool:
        """Fire one rule of the current round; True if one fired."""
        round_ = self.round
        state = self._state
        prevotes = state.prevotes.get(round_)
        precommits = state.precommits.get(round_)
        needed = self._votes_needed()
        if self.step_ == Step.PROPOSE and self._upon_proposal():
            return True
        if prevotes is not None and self.step_ >= Step.PREVOTE:
            if self.step_ == Step.PREVOTE and prevotes.total >= needed and self._once(34):
                self._schedule(TimerKind.PREVOTE)  # line 34
                return True
            if self._upon_polka(prevotes, needed):
                return True
            if self.step_ == Step.PREVOTE and prevotes.count(None) >= needed:
                self._enter_precommit(None)  # line 44
                return True
        if precommits is not None and precommits.total >= needed and self._once(47):
            self._schedule(TimerKind.PRECOMMIT)  # line 47
            return True
        return False

    def _once(self, line: int) -> bool:
        """True the first time rule ``line`` fires in the current round ("for the first time")."""
        key = (line, self.round)
        if key in self._done_once:
            return False
        self._done_once.add(key)
        return True

    def _upon_proposal(self) -> bool:
        """Lines 22 and 28: prevote on the round's proposal."""
        state = self._state
        for proposal in state.proposals.get(self.round, []):
            block = proposal.block
            verdict = state.verdicts.get(block.hash)
            if verdict is None:
                continue  # the application has not answered yet
            if proposal.pol_round != NIL_ROUND:
                polka = state.prevotes.get(proposal.pol_round)
                if polka is None or polka.count(block.hash) < self._votes_needed():
                    continue  # line 28 needs the proof-of-lock round's 2f+1 prevotes
            good = verdict and self._lock_permits(block, proposal.pol_round)
            self._enter_prevote(block.hash if good else None)
            return True
        return False

    def _upon_polka(self, prevotes: VoteSet, needed: int) -> bool:
        """Line 36: 2f+1 prevotes for the round's valid proposal: lock, precommit, valid."""
        for block_hash in prevotes.hashes_with(needed):
            block = self._state.blocks.get(block_hash)
            if block is None or not self._state.verdicts.get(block_hash, False):
                continue
            proposals = self._state.proposals.get(self.round, [])
            if not any(p.block_hash == block_hash for p in proposals):
                continue
            if not self._once(36):
                return False
            if self.step_ == Step.PREVOTE:
                self._enter_precommit(block)
            self._valid_round = self.round
            self._valid_block = block
            return True
        return False

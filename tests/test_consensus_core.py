"""Unit tests of the consensus core, stepping messages directly.

Each test names the rule of "The latest gossip on BFT consensus" (Buchman, Kwon, Milosevic
2018, Algorithm 1) it checks, by line number. Validators are the simulator's fixed ones:
val-0 .. val-3, n = 4, f = 1, quorum 3. The core under test is val-0 unless stated.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus import (
    NIL_ROUND,
    Block,
    BlockBuilt,
    BlockSynced,
    BlockValidated,
    Broadcast,
    BuildBlock,
    CommitBlock,
    Config,
    Consensus,
    Driver,
    FetchBlocks,
    Height,
    Persist,
    Precommit,
    Prevote,
    Proposal,
    Receive,
    Resume,
    Round,
    SafetyRecord,
    ScheduleTimeout,
    SignatureVerifier,
    Start,
    Step,
    TimeoutFired,
    TimerKind,
    ValidateBlock,
    ValidatorId,
)
from consensus.events import Action
from consensus.messages import proposal_payload, vote_payload
from consensus.simulator.world import Storage, ToyApplication, sim_genesis, validator_key
from node.block import verify_commit
from node.errors import EncodingError
from node.genesis import fault_tolerance, quorum
from node.limits import VALIDATORS_MAX

GENESIS = sim_genesis(4)
CHAIN = GENESIS.chain_id
VERIFIER = SignatureVerifier(CHAIN, {v.id: v.public_key for v in GENESIS.validators})


def vid(index: int) -> ValidatorId:
    return ValidatorId(f"val-{index}")


def make_core(index: int = 0, height: int = 1, record: SafetyRecord | None = None) -> Consensus:
    config = Config.from_genesis(GENESIS, vid(index))
    return Consensus(
        config, validator_key(index), VERIFIER, Resume(height=Height(height), record=record)
    )


def block(height: int = 1, round_: int = 0, proposer: int = 1, salt: int = 0) -> Block:
    app = ToyApplication(GENESIS, Storage(), set(), lambda: GENESIS.genesis_time_ms + 10 + salt)
    return app.build_block(Height(height), Round(round_), vid(proposer))


def proposal(b: Block, round_: int = 0, pol_round: int = -1, signer: int | None = None) -> Proposal:
    signer = (b.height + round_) % 4 if signer is None else signer
    payload = proposal_payload(CHAIN, b.height, round_, pol_round, b.hash)
    return Proposal(
        height=b.height,
        round=Round(round_),
        pol_round=Round(pol_round),
        block=b,
        proposer=vid(signer),
        signature=validator_key(signer).sign("proposal", payload),
    )


def vote(
    kind: type[Prevote] | type[Precommit],
    signer: int,
    hash_: str | None,
    round_: int = 0,
    height: int = 1,
) -> Prevote | Precommit:
    payload = vote_payload(CHAIN, height, round_, hash_)
    return kind(
        height=Height(height),
        round=Round(round_),
        block_hash=hash_,
        validator=vid(signer),
        signature=validator_key(signer).sign(kind.KIND, payload),
    )


def started(core: Consensus) -> list[Action]:
    return core.step(Start())


def receive(core: Consensus, *messages: Proposal | Prevote | Precommit) -> list[Action]:
    actions: list[Action] = []
    for message in messages:
        actions += core.step(Receive(message=message))
    return actions


def broadcasts(actions: list[Action]) -> list[Proposal | Prevote | Precommit]:
    return [a.message for a in actions if isinstance(a, Broadcast)]


def prevotes_sent(actions: list[Action]) -> list[str | None]:
    return [m.block_hash for m in broadcasts(actions) if isinstance(m, Prevote)]


def precommits_sent(actions: list[Action]) -> list[str | None]:
    return [m.block_hash for m in broadcasts(actions) if isinstance(m, Precommit)]


def timers(actions: list[Action]) -> list[tuple[TimerKind, int, int]]:
    return [(a.kind, a.round, a.duration_ms) for a in actions if isinstance(a, ScheduleTimeout)]


def validated(core: Consensus, b: Block, valid: bool = True) -> list[Action]:
    return core.step(BlockValidated(height=b.height, block_hash=b.hash, valid=valid))


def at_prevote_with_proposal(core: Consensus, b: Block) -> None:
    """Start val-0 at height 1 and have it prevote ``b`` in round 0 (line 22)."""
    started(core)
    receive(core, proposal(b))
    validated(core, b)
    assert core.step_ == Step.PREVOTE


# --- StartRound (lines 10-21) -----------------------------------------------------------


def test_start_round_proposer_rotates_over_genesis_order() -> None:
    core = make_core()
    got = [core.proposer(Height(h), Round(r)) for h, r in [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0)]]
    assert got == [vid(1), vid(2), vid(3), vid(0), vid(2)]


def test_start_round_proposer_builds_then_proposes_line_14() -> None:
    core = make_core(index=1)
    actions = started(core)
    assert [a for a in actions if isinstance(a, BuildBlock)] == [
        BuildBlock(height=Height(1), round=Round(0), proposer=vid(1))
    ]
    b = block(proposer=1)
    actions = core.step(BlockBuilt(height=Height(1), round=Round(0), block=b))
    sent = broadcasts(actions)
    assert isinstance(sent[0], Proposal) and sent[0].block_hash == b.hash
    assert sent[0].pol_round == NIL_ROUND
    assert VERIFIER.check(sent[0])
    # The proposer's own block is valid to it: it prevotes at once (line 22).
    assert prevotes_sent(actions) == [b.hash]


def test_start_round_non_proposer_schedules_timeout_propose_line_21() -> None:
    actions = started(make_core())
    assert (TimerKind.PROPOSE, 0, GENESIS.params["timeout_propose_ms"]) in timers(actions)
    assert not any(isinstance(a, BuildBlock) for a in actions)


# --- line 22: a fresh proposal -----------------------------------------------------------


def test_line_22_prevote_for_valid_proposal_after_application_verdict() -> None:
    core = make_core()
    started(core)
    b = block()
    actions = receive(core, proposal(b))
    assert [a for a in actions if isinstance(a, ValidateBlock)] == [
        ValidateBlock(height=Height(1), block=b)
    ]
    assert prevotes_sent(actions) == []  # waits for the application's verdict
    assert prevotes_sent(validated(core, b)) == [b.hash]


def test_line_22_prevote_nil_for_invalid_block() -> None:
    core = make_core()
    started(core)
    b = block()
    receive(core, proposal(b))
    assert prevotes_sent(validated(core, b, valid=False)) == [None]


def test_line_22_locked_validator_prevotes_nil_for_another_fresh_block() -> None:
    core = make_core()
    b = block()
    at_prevote_with_proposal(core, b)
    receive(core, vote(Prevote, 1, b.hash), vote(Prevote, 2, b.hash))
    assert core.locked_round == 0
    # Round 1 (proposer val-2) proposes a different, fresh block.
    core.step(TimeoutFired(height=Height(1), round=Round(0), kind=TimerKind.PRECOMMIT))
    other = block(round_=1, proposer=2, salt=5)
    receive(core, proposal(other, round_=1))
    assert prevotes_sent(validated(core, other)) == [None]


# --- line 28: a proposal with a proof-of-lock ---------------------------------------------


def test_line_28_prevote_pol_proposal_when_locked_round_not_newer() -> None:
    core = make_core()
    first = block()
    at_prevote_with_proposal(core, first)
    receive(core, vote(Prevote, 1, first.hash), vote(Prevote, 2, first.hash))
    assert core.locked_round == 0
    core.step(TimeoutFired(height=Height(1), round=Round(0), kind=TimerKind.PRECOMMIT))
    # Round 1: a polka for another block in round 1 ...
    other = block(round_=1, proposer=2, salt=5)
    receive(core, proposal(other, round_=1))
    validated(core, other)
    receive(core, *(vote(Prevote, i, other.hash, round_=1) for i in (1, 2, 3)))
    core.step(TimeoutFired(height=Height(1), round=Round(1), kind=TimerKind.PRECOMMIT))
    # ... justifies prevoting it in round 2 although we are locked on ``first`` in round 0.
    actions = receive(core, proposal(other, round_=2, pol_round=1))
    assert prevotes_sent(actions) == [other.hash]


def test_line_28_waits_for_the_proof_of_lock_prevotes() -> None:
    core = make_core()
    started(core)
    core.step(TimeoutFired(height=Height(1), round=Round(0), kind=TimerKind.PROPOSE))
    core.step(TimeoutFired(height=Height(1), round=Round(0), kind=TimerKind.PREVOTE))
    core.step(TimeoutFired(height=Height(1), round=Round(0), kind=TimerKind.PRECOMMIT))
    b = block(round_=0, proposer=1)
    receive(core, proposal(b, round_=1, pol_round=0, signer=2))
    assert prevotes_sent(validated(core, b)) == []
    actions = receive(core, *(vote(Prevote, i, b.hash, round_=0) for i in (1, 2, 3)))
    assert prevotes_sent(actions) == [b.hash]


# --- lines 34-46: prevotes ------------------------------------------------------------------


def test_line_34_two_thirds_of_any_prevotes_schedule_timeout_prevote_once() -> None:
    core = make_core()
    b = block()
    at_prevote_with_proposal(core, b)
    actions = receive(core, vote(Prevote, 1, None), vote(Prevote, 2, b.hash))
    assert [k for k, _, _ in timers(actions)] == [TimerKind.PREVOTE]
    assert timers(receive(core, vote(Prevote, 3, None))) == []


def test_line_36_polka_locks_and_precommits_the_block() -> None:
    core = make_core()
    b = block()
    at_prevote_with_proposal(core, b)
    actions = receive(core, vote(Prevote, 1, b.hash), vote(Prevote, 2, b.hash))
    assert precommits_sent(actions) == [b.hash]
    assert core.locked_round == 0
    persisted = [a.record for a in actions if isinstance(a, Persist)]
    assert persisted[-1].locked_block == b and persisted[-1].step == Step.PRECOMMIT


def test_line_36_polka_needs_the_blocks_own_proposal() -> None:
    core = make_core()
    started(core)
    b = block()
    actions = receive(core, *(vote(Prevote, i, b.hash) for i in (1, 2, 3)))
    assert precommits_sent(actions) == []


def test_line_36_counts_an_equivocators_vote_for_each_value() -> None:
    # Algorithm 1 counts messages per value: val-1 signed both nil and b, and an honest
    # validator that relies on val-1's vote for b must be able to show the polka to us.
    core = make_core()
    b = block()
    at_prevote_with_proposal(core, b)
    receive(core, vote(Prevote, 1, None), vote(Prevote, 3, None))
    actions = receive(core, vote(Prevote, 1, b.hash), vote(Prevote, 2, b.hash))
    assert precommits_sent(actions) == [b.hash]
    assert len(core.evidence) == 1


def test_line_44_nil_polka_precommits_nil() -> None:
    core = make_core()
    b = block()
    at_prevote_with_proposal(core, b)
    actions = receive(core, *(vote(Prevote, i, None) for i in (1, 2, 3)))
    assert precommits_sent(actions) == [None]
    assert core.locked_round == NIL_ROUND


def test_line_47_two_thirds_of_any_precommits_schedule_timeout_precommit() -> None:
    core = make_core()
    started(core)
    actions = receive(core, *(vote(Precommit, i, None) for i in (1, 2, 3)))
    assert [k for k, _, _ in timers(actions)] == [TimerKind.PRECOMMIT]


def test_line_49_decides_with_two_thirds_precommits_and_a_valid_commit() -> None:
    core = make_core()
    b = block()
    at_prevote_with_proposal(core, b)
    actions = receive(core, *(vote(Precommit, i, b.hash) for i in (1, 2, 3)))
    commits = [a for a in actions if isinstance(a, CommitBlock)]
    assert len(commits) == 1 and commits[0].block == b
    assert verify_commit(GENESIS, commits[0].commit, b.hash, 1)
    assert core.height == 2 and core.round == 0


def test_line_49_two_precommits_are_not_enough() -> None:
    core = make_core()
    b = block()
    at_prevote_with_proposal(core, b)
    actions = receive(core, vote(Precommit, 1, b.hash), vote(Precommit, 2, b.hash))
    assert not any(isinstance(a, CommitBlock) for a in actions)


def test_line_49_decides_in_an_earlier_round() -> None:
    core = make_core()
    b = block()
    at_prevote_with_proposal(core, b)
    core.step(TimeoutFired(height=Height(1), round=Round(0), kind=TimerKind.PRECOMMIT))
    assert core.round == 1
    actions = receive(core, *(vote(Precommit, i, b.hash, round_=0) for i in (1, 2, 3)))
    assert [a.block for a in actions if isinstance(a, CommitBlock)] == [b]


def test_line_55_messages_of_f_plus_1_validators_skip_to_their_round() -> None:
    core = make_core()
    started(core)
    assert receive(core, vote(Prevote, 1, None, round_=5)) == [] or core.round == 0
    assert core.round == 0
    receive(core, vote(Prevote, 2, None, round_=5))
    assert core.round == 5


# --- lines 57-65: timeouts -------------------------------------------------------------------


def test_line_57_timeout_propose_prevotes_nil() -> None:
    core = make_core()
    started(core)
    actions = core.step(TimeoutFired(height=Height(1), round=Round(0), kind=TimerKind.PROPOSE))
    assert prevotes_sent(actions) == [None]


def test_line_61_timeout_prevote_precommits_nil() -> None:
    core = make_core()
    at_prevote_with_proposal(core, block())
    actions = core.step(TimeoutFired(height=Height(1), round=Round(0), kind=TimerKind.PREVOTE))
    assert precommits_sent(actions) == [None]


def test_line_65_timeout_precommit_starts_next_round_with_longer_timeouts() -> None:
    core = make_core()
    started(core)
    actions = core.step(TimeoutFired(height=Height(1), round=Round(0), kind=TimerKind.PRECOMMIT))
    assert core.round == 1
    delta = GENESIS.params["timeout_delta_ms"]
    assert (TimerKind.PROPOSE, 1, GENESIS.params["timeout_propose_ms"] + delta) in timers(actions)


def test_stale_timeouts_are_ignored() -> None:
    core = make_core()
    started(core)
    core.step(TimeoutFired(height=Height(1), round=Round(0), kind=TimerKind.PRECOMMIT))
    assert core.step(TimeoutFired(height=Height(1), round=Round(0), kind=TimerKind.PROPOSE)) == []


# --- authenticity and membership ----------------------------------------------------------


def test_vote_with_bad_signature_does_not_count() -> None:
    core = make_core()
    b = block()
    at_prevote_with_proposal(core, b)
    good = vote(Prevote, 1, b.hash)
    bad = Prevote(
        height=good.height,
        round=good.round,
        block_hash=good.block_hash,
        validator=vid(2),
        signature=good.signature,
    )
    assert precommits_sent(receive(core, good, bad)) == []


def test_vote_from_non_member_does_not_count() -> None:
    core = make_core()
    b = block()
    at_prevote_with_proposal(core, b)
    stranger = Prevote(
        height=Height(1),
        round=Round(0),
        block_hash=b.hash,
        validator=ValidatorId("mallory"),
        signature=validator_key(9).sign("prevote", vote_payload(CHAIN, 1, 0, b.hash)),
    )
    assert precommits_sent(receive(core, vote(Prevote, 1, b.hash), stranger)) == []


def test_line_22_proposal_from_a_non_proposer_is_ignored() -> None:
    core = make_core()
    started(core)
    actions = receive(core, proposal(block(proposer=3), signer=3))
    assert not any(isinstance(a, ValidateBlock) for a in actions)


def test_prevote_signature_cannot_be_replayed_as_precommit() -> None:
    core = make_core()
    b = block()
    at_prevote_with_proposal(core, b)
    prevote = vote(Prevote, 1, b.hash)
    replayed = Precommit(
        height=prevote.height,
        round=prevote.round,
        block_hash=b.hash,
        validator=prevote.validator,
        signature=prevote.signature,
    )
    assert not VERIFIER.check(replayed)


def test_messages_validate_on_construction() -> None:
    with pytest.raises(EncodingError):
        Prevote(
            height=Height(0), round=Round(0), block_hash=None, validator=vid(1), signature="00" * 64
        )
    with pytest.raises(EncodingError):
        Prevote(
            height=Height(1),
            round=Round(0),
            block_hash="xyz",
            validator=vid(1),
            signature="00" * 64,
        )
    with pytest.raises(EncodingError):
        proposal(block(), round_=0, pol_round=0)


# --- safety record: no double signing after a crash ---------------------------------------------


def test_ready_persists_the_safety_record_before_its_messages() -> None:
    driver = Driver(make_core())
    driver.step(Start())
    b = block()
    driver.step(Receive(message=proposal(b)))
    driver.advance(driver.ready())
    driver.step(BlockValidated(height=Height(1), block_hash=b.hash, valid=True))
    ready = driver.ready()
    assert ready.persist is not None and ready.persist.step == Step.PREVOTE
    assert [m.block_hash for m in ready.messages] == [b.hash]
    driver.advance(ready)
    assert not driver.has_ready()


def test_restart_refuses_to_sign_against_its_record() -> None:
    core = make_core()
    b = block()
    at_prevote_with_proposal(core, b)
    record = core._record  # what the runtime persisted
    restarted = make_core(record=record)
    actions = started(restarted)
    # It resends the very prevote it signed (same bytes), and nothing conflicting.
    assert prevotes_sent(actions) == [b.hash]
    actions = restarted.step(TimeoutFired(height=Height(1), round=Round(0), kind=TimerKind.PROPOSE))
    assert prevotes_sent(actions) == []


def test_restart_keeps_its_lock() -> None:
    core = make_core()
    b = block()
    at_prevote_with_proposal(core, b)
    receive(core, vote(Prevote, 1, b.hash), vote(Prevote, 2, b.hash))
    restarted = make_core(record=core._record)
    started(restarted)
    assert restarted.locked_round == 0
    restarted.step(TimeoutFired(height=Height(1), round=Round(0), kind=TimerKind.PRECOMMIT))
    other = block(round_=1, proposer=2, salt=7)
    receive(restarted, proposal(other, round_=1))
    assert prevotes_sent(validated(restarted, other)) == [None]


def test_safety_record_conflicts() -> None:
    record = SafetyRecord(height=Height(3), round=Round(2), step=Step.PREVOTE, block_hash="ab" * 32)
    assert record.conflicts(Height(3), Round(2), Step.PREVOTE, None)
    assert not record.conflicts(Height(3), Round(2), Step.PREVOTE, "ab" * 32)
    assert record.conflicts(Height(3), Round(1), Step.PRECOMMIT, "ab" * 32)
    assert not record.conflicts(Height(3), Round(2), Step.PRECOMMIT, None)
    assert not record.conflicts(Height(4), Round(0), Step.PROPOSE, "cd" * 32)


def test_safety_record_json_round_trip() -> None:
    b = block()
    record = SafetyRecord(
        height=Height(1),
        round=Round(0),
        step=Step.PRECOMMIT,
        block_hash=b.hash,
        locked_round=Round(0),
        locked_block=b,
        signed_votes=(vote(Prevote, 0, b.hash), vote(Precommit, 0, b.hash)),
    )
    assert SafetyRecord.from_json(record.to_json()) == record


def test_restart_resends_the_votes_of_its_round_and_the_previous_one() -> None:
    core = make_core()
    b = block()
    at_prevote_with_proposal(core, b)
    receive(core, vote(Prevote, 1, b.hash), vote(Prevote, 2, b.hash))  # precommits b
    core.step(TimeoutFired(height=Height(1), round=Round(0), kind=TimerKind.PRECOMMIT))
    core.step(TimeoutFired(height=Height(1), round=Round(1), kind=TimerKind.PROPOSE))
    actions = started(make_core(record=core._record))
    sent = [(type(m).__name__, m.round, m.block_hash) for m in broadcasts(actions)]
    assert sent == [("Prevote", 0, b.hash), ("Precommit", 0, b.hash), ("Prevote", 1, None)]


# --- catch-up ------------------------------------------------------------------------------------


def test_messages_two_heights_ahead_ask_to_fetch_blocks() -> None:
    core = make_core()
    started(core)
    actions = receive(core, vote(Prevote, 2, None, height=3))
    assert [a for a in actions if isinstance(a, FetchBlocks)] == [
        FetchBlocks(peer=vid(2), from_height=Height(1))
    ]


def test_synced_block_with_valid_commit_is_committed() -> None:
    leader = make_core()
    b = block()
    at_prevote_with_proposal(leader, b)
    actions = receive(leader, *(vote(Precommit, i, b.hash) for i in (1, 2, 3)))
    commit = next(a for a in actions if isinstance(a, CommitBlock)).commit
    behind = make_core(index=3)
    started(behind)
    forged = dict(commit, signatures=commit["signatures"][:2])
    assert behind.step(BlockSynced(block=b, commit=forged)) == [] or behind.height == 1  # type: ignore[arg-type]
    assert behind.height == 1
    actions = behind.step(BlockSynced(block=b, commit=commit))
    assert [a.block for a in actions if isinstance(a, CommitBlock)] == [b]
    assert behind.height == 2


def test_next_height_messages_are_buffered_until_we_get_there() -> None:
    core = make_core()
    b = block()
    at_prevote_with_proposal(core, b)
    nxt = block(height=2, proposer=2)
    nxt_header = dict(nxt.header, prev_hash=b.hash)
    nxt = Block(header=nxt_header, transactions=())  # type: ignore[arg-type]
    receive(core, proposal(nxt, round_=0))
    actions = receive(core, *(vote(Precommit, i, b.hash) for i in (1, 2, 3)))
    assert [a.block for a in actions if isinstance(a, ValidateBlock)] == [nxt]


# --- quorum arithmetic -----------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=VALIDATORS_MAX))
def test_two_quorums_share_an_honest_validator(validator_count: int) -> None:
    # The safety argument of every "2f+1" rule: two quorums overlap in more than f validators.
    faulty = fault_tolerance(validator_count)
    assert 2 * quorum(validator_count) - validator_count >= faulty + 1
    # ... and the honest validators alone form a quorum (liveness with f faulty).
    assert validator_count - faulty >= quorum(validator_count)

"""Commit certificates: more than two thirds of the genesis validators, distinct and valid."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from node.block import block_hash, check_header_shape, precommit_message, verify_commit
from node.consortium import make_consortium
from node.crypto import KeyPair
from node.errors import ProofError

CONSORTIUM = make_consortium(validators=4)
GENESIS = CONSORTIUM.genesis
HEADER: dict[str, Any] = {
    "chain_id": GENESIS.chain_id,
    "height": 5,
    "round": 2,
    "timestamp_ms": 1_767_225_605_000,
    "proposer": "validator-3",
    "prev_hash": "11" * 32,
    "tx_root": "22" * 32,
    "state_root": "33" * 32,
    "tx_count": 0,
}
HASH = block_hash(HEADER)  # type: ignore[arg-type]


def commit(signers: list[str], round_: int = 2) -> dict[str, Any]:
    message = precommit_message(GENESIS.chain_id, 5, round_, HASH)
    return {
        "height": 5,
        "round": round_,
        "block_hash": HASH,
        "signatures": [
            {"validator": v, "signature": CONSORTIUM.validator_keys[v].sign("precommit", message)}
            for v in signers
        ],
    }


def refused(candidate: object, fragment: str, expected_hash: str = HASH, height: int = 5) -> None:
    with pytest.raises(ProofError) as caught:
        verify_commit(GENESIS, candidate, expected_hash, height)
    assert fragment in str(caught.value)


def test_a_quorum_of_distinct_valid_signatures_certifies() -> None:
    verify_commit(GENESIS, commit(["validator-0", "validator-1", "validator-2"]), HASH, 5)
    verify_commit(
        GENESIS, commit(["validator-3", "validator-1", "validator-0", "validator-2"]), HASH, 5
    )
    assert CONSORTIUM.commit_for(5, 2, HASH)["signatures"]


def test_every_forgery_is_named() -> None:
    refused(commit(["validator-0", "validator-1"]), "2 signatures; 3 of 4 validators are needed")
    refused(commit(["validator-0", "validator-0", "validator-1"]), "signs twice")
    stranger = commit(["validator-0", "validator-1"])
    stranger["signatures"].append(
        {
            "validator": "validator-9",
            "signature": KeyPair.from_seed_hex("44" * 32).sign("precommit", {}),
        }
    )
    refused(stranger, "unknown validator 'validator-9'")
    wrong_round = commit(["validator-0", "validator-1", "validator-2"])
    wrong_round["round"] = 1  # signatures were made for round 2
    refused(wrong_round, "bad signature by validator-0")
    other_block = copy.deepcopy(commit(["validator-0", "validator-1", "validator-2"]))
    refused(other_block, "commit certifies block", expected_hash="44" * 32)
    refused(commit(["validator-0", "validator-1", "validator-2"]), "for height 5", height=6)
    refused({"height": 5}, "commit needs exactly")
    swapped = commit(["validator-0", "validator-1", "validator-2"])
    swapped["signatures"][0]["validator"] = "validator-3"
    refused(swapped, "bad signature by validator-3")


def test_header_shape_is_checked() -> None:
    assert check_header_shape(dict(HEADER)) == HEADER
    for change, fragment in [
        ({"height": -1}, "header.height"),
        ({"tx_root": "XY"}, "header.tx_root"),
        ({"extra": 1}, "exactly the fields"),
        ({"proposer": 7}, "header.proposer"),
    ]:
        with pytest.raises(ProofError, match=fragment):
            check_header_shape({**HEADER, **change})

"""The committed artifacts are what the pinned solc makes of the committed sources; the
toolchain fails with clear, typed errors when a piece is missing."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from contracts.anvil import Anvil, AnvilNotFound, find_anvil
from contracts.build import (
    ARTIFACTS_DIR,
    CONTRACT_NAMES,
    SOLC_VERSION,
    WRAPPER,
    CompilerError,
    artifact_bytes,
    compile_contracts,
    find_solc,
    load_artifacts,
    read_sources,
)


@pytest.mark.evm
def test_committed_artifacts_match_a_fresh_compilation() -> None:
    fresh = compile_contracts()
    for name in CONTRACT_NAMES:
        committed = (ARTIFACTS_DIR / f"{name}.json").read_bytes()
        assert committed == artifact_bytes(fresh[name]), (
            f"{name}: artifact differs from the sources; run `coopledger contracts build`"
        )


def test_artifacts_name_the_pinned_compiler_and_the_sources() -> None:
    sources = read_sources()
    for artifact in load_artifacts().values():
        assert artifact.compiler == SOLC_VERSION
        assert set(artifact.source_sha256) == set(sources)
        assert artifact.bytecode.startswith("0x60")


@pytest.mark.evm
def test_the_wrapper_reports_the_pinned_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOLC_BINARY", raising=False)
    assert Path(find_solc()).is_file()
    output = subprocess.run(
        [str(WRAPPER), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert output.startswith("solc, the solidity compiler commandline interface\nVersion: ")
    assert SOLC_VERSION in output


def test_a_solc_binary_of_another_version_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "solc"
    fake.write_text("#!/bin/sh\necho 'Version: 0.8.19+commit.7dd6d404.Linux.g++'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("SOLC_BINARY", str(fake))
    with pytest.raises(CompilerError, match=r"expected 0\.8\.28"):
        find_solc()


@pytest.mark.evm
def test_a_compile_error_is_reported_with_solc_s_message() -> None:
    sources = {
        "Broken.sol": "pragma solidity 0.8.28;\ncontract B { function f() public { g(); } }\n"
    }
    with pytest.raises(CompilerError, match="Undeclared identifier"):
        compile_contracts(sources)


def test_a_missing_anvil_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANVIL_BINARY", "/nonexistent/anvil")
    with pytest.raises(AnvilNotFound, match=r"scripts/bootstrap\.sh|not an executable"):
        find_anvil()
    with pytest.raises(AnvilNotFound), Anvil.start():
        pass


@pytest.mark.evm
def test_anvil_starts_and_stops_cleanly() -> None:
    with Anvil.start() as anvil:
        process = anvil.process
        assert process.poll() is None
        cache = anvil.cache_dir
        assert cache.is_dir()
    assert process.returncode is not None
    assert not cache.exists()

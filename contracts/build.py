"""Compilation of the contracts with py-solc-x, and their committed artifacts.

The compiler is real solc at a pinned version. A native ``solc`` (from ``SOLC_BINARY`` or on
``PATH``) is used when it reports the pinned version; otherwise the npm package ``solc``
(solc-js: the official compiler built to WebAssembly) through ``contracts/solc-wrapper.js``,
which answers ``--version`` and ``--standard-json`` the way py-solc-x expects.

Artifacts (``contracts/artifacts/<Name>.json``) hold the ABI, the creation bytecode, the
compiler version, the settings and the SHA-256 of every source; they are written with sorted
keys and a fixed indentation, so compiling the same sources always gives the same bytes
(``tests/test_contracts_build.py`` recompiles and compares).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import solcx

from node.errors import CoopledgerError

SOLC_VERSION = "0.8.28+commit.7893614a"
"""The pinned compiler (package.json pins the same solc-js release)."""

CONTRACTS_DIR = Path(__file__).resolve().parent
ARTIFACTS_DIR = CONTRACTS_DIR / "artifacts"
REPO_ROOT = CONTRACTS_DIR.parent
WRAPPER = CONTRACTS_DIR / "solc-wrapper.js"

SOURCES = ("Membership.sol", "JointPurchase.sol", "Provenance.sol")
CONTRACT_NAMES = ("Membership", "JointPurchase", "Provenance")

SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    # Pinned so that the bytecode does not change with the compiler's default target.
    "evmVersion": "cancun",
    # The IR pipeline: the views return structs of many fields, which the legacy code
    # generator cannot fit in 16 stack slots ("stack too deep").
    "viaIR": True,
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
}

SOLC_TIMEOUT_S = 300
"""solc-js compiles these sources in a few seconds; a hung node process must not hang CI."""


class CompilerError(CoopledgerError):
    """No usable solc, or the sources do not compile."""


@dataclass(frozen=True, slots=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    compiler: str
    source_sha256: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "contract": self.name,
            "compiler": self.compiler,
            "settings": SETTINGS,
            "source_sha256": self.source_sha256,
            "abi": self.abi,
            "bytecode": self.bytecode,
        }


def _reported_version(binary: str) -> str | None:
    try:
        output = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
    except OSError:
        return None
    for line in output.splitlines():
        if line.startswith("Version: "):
            return line.removeprefix("Version: ").strip()
    return None


def _is_pinned(version: str | None) -> bool:
    # Native builds say "...+commit.7893614a.Linux.g++", solc-js "...Emscripten.clang".
    return version is not None and version.startswith(SOLC_VERSION)


def find_solc() -> str:
    """Path of a solc binary reporting the pinned version; :class:`CompilerError` if none."""
    explicit = os.environ.get("SOLC_BINARY")
    if explicit:
        version = _reported_version(explicit)
        if not _is_pinned(version):
            raise CompilerError(
                f"SOLC_BINARY={explicit} reports {version or 'no version'}, expected {SOLC_VERSION}"
            )
        return explicit
    native = shutil.which("solc")
    if native and _is_pinned(_reported_version(native)):
        return native
    if shutil.which("node") is None:
        raise CompilerError("node is not on PATH: install Node.js, then run scripts/bootstrap.sh")
    if not (REPO_ROOT / "node_modules" / "solc").is_dir():
        raise CompilerError("node_modules/solc is missing: run scripts/bootstrap.sh")
    version = _reported_version(str(WRAPPER))
    if not _is_pinned(version):
        raise CompilerError(
            f"{WRAPPER} reports {version or 'no version'}, expected {SOLC_VERSION}: "
            "run scripts/bootstrap.sh"
        )
    return str(WRAPPER)


def read_sources() -> dict[str, str]:
    return {name: (CONTRACTS_DIR / name).read_text(encoding="utf-8") for name in SOURCES}


def compile_contracts(sources: dict[str, str] | None = None) -> dict[str, Artifact]:
    """Compile ``sources`` (file name to text; default: the committed ones) with solc.

    Tests pass modified sources to build deliberately broken variants.
    """
    sources = read_sources() if sources is None else sources
    binary = find_solc()
    standard_input = {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sorted(sources.items())},
        "settings": SETTINGS,
    }
    try:
        output = solcx.compile_standard(
            standard_input, solc_binary=binary, base_path=str(CONTRACTS_DIR)
        )
    except solcx.exceptions.SolcError as error:
        found = getattr(error, "error_dict", None) or []
        errors = found.get("errors", []) if isinstance(found, dict) else found
        messages = [e.get("formattedMessage", "") for e in errors if e.get("severity") == "error"]
        raise CompilerError("solc failed:\n" + ("\n".join(messages) or str(error))) from error
    version = _reported_version(binary) or SOLC_VERSION
    digests = {
        name: hashlib.sha256(text.encode("utf-8")).hexdigest()
        for name, text in sorted(sources.items())
    }
    artifacts: dict[str, Artifact] = {}
    for file_name, contracts in output.get("contracts", {}).items():
        for name, compiled in contracts.items():
            if name not in CONTRACT_NAMES or f"{name}.sol" != file_name:
                continue
            artifacts[name] = Artifact(
                name=name,
                abi=compiled["abi"],
                bytecode="0x" + compiled["evm"]["bytecode"]["object"],
                compiler=version.split(".Emscripten")[0].split(".Linux")[0],
                source_sha256=digests,
            )
    missing = sorted(set(CONTRACT_NAMES) - set(artifacts))
    if missing:
        raise CompilerError(f"solc produced no output for {', '.join(missing)}")
    return artifacts


def artifact_bytes(artifact: Artifact) -> bytes:
    """The exact bytes of a committed artifact file."""
    return (json.dumps(artifact.to_json(), indent=1, sort_keys=True) + "\n").encode("utf-8")


def write_artifacts(artifacts: dict[str, Artifact], directory: Path = ARTIFACTS_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in CONTRACT_NAMES:
        path = directory / f"{name}.json"
        path.write_bytes(artifact_bytes(artifacts[name]))
        written.append(path)
    return written


def load_artifacts(directory: Path = ARTIFACTS_DIR) -> dict[str, Artifact]:
    """The committed artifacts; :class:`CompilerError` if one is missing."""
    artifacts = {}
    for name in CONTRACT_NAMES:
        path = directory / f"{name}.json"
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise CompilerError(
                f"{path}: {error.strerror}: run `coopledger contracts build`"
            ) from error
        artifacts[name] = Artifact(
            name=document["contract"],
            abi=document["abi"],
            bytecode=document["bytecode"],
            compiler=document["compiler"],
            source_sha256=document["source_sha256"],
        )
    return artifacts

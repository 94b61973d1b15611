"""Every expected failure in coopledger, as one tree of typed errors.

Expected trouble (a client's bad request, an invalid transaction, a bad genesis file, a
proof that does not check) is raised as one of these and mapped to a response at one
boundary: the CLI prints it, the gateway turns it into RFC 9457 problem+json, the node
logs it and drops the message. A broken invariant is not in this tree: it is an
:class:`node.invariant.InvariantViolation` and crashes the process.

::

    CoopledgerError
    ├── EncodingError          input is not canonical-domain JSON (floats, bad UTF-8, ...)
    ├── ConfigError            a genesis, key or config file is invalid; names the field
    ├── RuleError              a transaction breaks a rule; carries a stable kebab-case code
    │   ├── AdmissionError     refused before it can enter a block (signature, chain, expiry, ...)
    │   └── ExecutionError     fails when executed; recorded in its receipt with the code
    ├── ProofError             a Merkle proof, state proof, commit or bundle does not verify
    └── StorageError           the database cannot be used
        └── SchemaVersionError the database was written by a different schema version
"""

from __future__ import annotations


class CoopledgerError(Exception):
    """Base of every expected coopledger failure."""


class EncodingError(CoopledgerError):
    """A value is outside the canonical JSON domain."""


class NestingError(EncodingError):
    """A value nests deeper than the canonical domain allows (counting the levels of the
    document that will carry it, when the check was told them)."""


class ConfigError(CoopledgerError):
    """A genesis, key or configuration file is invalid.

    ``field`` is the JSON path of the offending value (``validators[2].public_key``) so an
    operator can find it at once.
    """

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        super().__init__(f"{source}: {field}: {problem}")


class RuleError(CoopledgerError):
    """A transaction breaks a rule. ``code`` is the stable kebab-case error code."""

    def __init__(self, code: str, detail: str = "") -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}" if detail else code)


class AdmissionError(RuleError):
    """A transaction is refused before it may enter a block; nothing is recorded."""


class ExecutionError(RuleError):
    """A transaction fails at execution; its receipt records the code, the state is unchanged."""


class ProofError(CoopledgerError):
    """A proof, commit certificate or audit bundle does not verify."""


class StorageError(CoopledgerError):
    """The database cannot be used."""


class SchemaVersionError(StorageError):
    """The database was created by a different schema version."""

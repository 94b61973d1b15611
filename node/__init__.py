"""coopledger validator node: ledger core, storage, runtime and CLI."""

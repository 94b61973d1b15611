"""``python -m node ...`` runs the coopledger CLI (how the testnet launches validators)."""

from node.cli import main

main()

"""``coopledger bench``: a load generator and the measurements around it.

Modules: :mod:`~node.bench.workload` (the operation mix), :mod:`~node.bench.engine` (the
open-loop dispatcher and block monitor), :mod:`~node.bench.coop` (a testnet as the chain
under test), :mod:`~node.bench.evm` (the same mix on anvil), :mod:`~node.bench.procstat`,
:mod:`~node.bench.profile`, :mod:`~node.bench.report`, :mod:`~node.bench.run` and the
command in :mod:`~node.bench.cli`.
"""

"""The deterministic simulator: n validators, one process, virtual time, injected faults.

See ``docs/consensus.md`` for the faults, the checkers and the measured figures.
"""

from consensus.simulator.checkers import Violation
from consensus.simulator.mutants import MUTANTS
from consensus.simulator.run import SeedResult, SimulationConfig, run_seed, run_seeds
from consensus.simulator.scenario import FAULT_KINDS

__all__ = [
    "FAULT_KINDS",
    "MUTANTS",
    "SeedResult",
    "SimulationConfig",
    "Violation",
    "run_seed",
    "run_seeds",
]

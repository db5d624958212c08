"""Where does RSP help? The map of issue #16: one list of runs, their analysis, and a verdict per claim.

Why a package of its own: the cell list (`cells`), the reading of finished runs (`analyse`), the plots
(`plots`) and the verdict rules (`verdicts`) must agree on one definition of every cell, and the
script (`experiments/findings.sh`), the docs (`docs/findings.md`) and the tests all read that definition
from here instead of repeating it.
"""

from experiments.findings.cells import ENGINE, N_ATTEMPTS, N_PROBLEMS, Run, Step, runs, steps

__all__ = ["ENGINE", "N_ATTEMPTS", "N_PROBLEMS", "Run", "Step", "runs", "steps"]

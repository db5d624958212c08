"""Mechanism probes: entropy and KL by position, attention mass on injected slots, branching, diversity."""

from rsp.analysis.distributions import entropy, kl_divergence, log_probs
from rsp.analysis.run import AnalysisOptions, analyse_run
from rsp.analysis.scoring import attention_mass, teacher_forced_logits

__all__ = [
    "AnalysisOptions",
    "analyse_run",
    "attention_mass",
    "entropy",
    "kl_divergence",
    "log_probs",
    "teacher_forced_logits",
]

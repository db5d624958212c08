"""Random Soft Prompts: inject freshly sampled random embeddings into a causal LM's prompt.

The public API, in the order a script uses it: load a model, fit the embedding statistics,
build an RSP injection, lay prompts out with slots, generate N attempts, grade, score.
"""

from rsp.backends import Completion, HFBackend, SamplingConfig
from rsp.core import (
    INSERTION_POINTS,
    EmbeddingStats,
    Injection,
    NoInjection,
    PromptTokens,
    RandomSoftPrompt,
    RSPSampler,
    build_slotted_batch,
    derive_seed,
    fill_slots,
    fit_embedding_stats,
)
from rsp.evaluation import EvalConfig, run_eval
from rsp.methods import MethodOptions, build_method, method_names, register_method
from rsp.metrics import bootstrap_ci, maj_at_k, paired_comparison, pass_at_k, pass_at_k_curve
from rsp.models import LoadedModel, load_model, wrap_model
from rsp.tasks import Grader, Problem, PromptBuilder, Task, extract_answer, load_task

__version__ = "0.1.0"

__all__ = [
    "INSERTION_POINTS", "Completion", "EmbeddingStats", "EvalConfig", "Grader", "HFBackend", "Injection",
    "LoadedModel", "MethodOptions", "NoInjection", "Problem", "PromptBuilder", "PromptTokens", "RSPSampler",
    "RandomSoftPrompt", "SamplingConfig", "Task", "bootstrap_ci", "build_method", "build_slotted_batch",
    "derive_seed", "extract_answer", "fill_slots", "fit_embedding_stats", "load_model", "load_task", "maj_at_k",
    "method_names", "paired_comparison", "pass_at_k", "pass_at_k_curve", "register_method", "run_eval",
    "wrap_model",
]

"""Random Soft Prompts: inject freshly sampled random embeddings into a causal LM's prompt.

The front door:
- `rsp.attach(model, tokenizer, length=4)`: a fresh RSP per row inside your own `model.generate` loop;
- `rsp.generate(model, prompts, n=16, rsp=rsp.RSPConfig(length=4))`: n attempts per prompt on any engine
  (`Generator` keeps the model and engine for repeated calls);
- `rsp.embedding_stats(path_or_id)`: the RSP distribution, read from the embedding tensor alone.
Below it, in the order a pipeline uses it: load a model, fit the statistics, build an injection, lay
prompts out with slots, generate, grade, score.
"""

import rsp.baselines  # noqa: F401  (registers the controls and the trained soft prompt: see rsp.methods)
from rsp.attach import RSPHandle, attach
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
from rsp.engines import Completion, HFEngine, SamplingConfig
from rsp.evaluation import EvalConfig, run_eval
from rsp.generation import GenerationOutput, Generator, RSPConfig, Sample, generate
from rsp.methods import build_method, method_names, register_method
from rsp.metrics import bootstrap_ci, maj_at_k, paired_comparison, pass_at_k, pass_at_k_curve
from rsp.models import LoadedModel, embedding_stats, load_model, wrap_model
from rsp.tasks import Grader, Problem, PromptBuilder, Task, extract_answer, load_task

__version__ = "0.1.0"

__all__ = [
    "GenerationOutput",
    "Generator",
    "RSPConfig",
    "RSPHandle",
    "Sample",
    "attach",
    "embedding_stats",
    "generate",
    "INSERTION_POINTS",
    "Completion",
    "EmbeddingStats",
    "EvalConfig",
    "Grader",
    "HFEngine",
    "Injection",
    "LoadedModel",
    "NoInjection",
    "Problem",
    "PromptBuilder",
    "PromptTokens",
    "RSPSampler",
    "RandomSoftPrompt",
    "SamplingConfig",
    "Task",
    "bootstrap_ci",
    "build_method",
    "build_slotted_batch",
    "derive_seed",
    "extract_answer",
    "fill_slots",
    "fit_embedding_stats",
    "load_model",
    "load_task",
    "maj_at_k",
    "method_names",
    "paired_comparison",
    "pass_at_k",
    "pass_at_k_curve",
    "register_method",
    "run_eval",
    "wrap_model",
]

"""Random Soft Prompts: inject freshly sampled random embeddings into a causal LM's prompt.

The front door is `rsp.attach` (inside your own `model.generate`), `rsp.generate` / `rsp.Generator` (n
attempts per prompt on any engine) and `rsp.embedding_stats`. Why lazy: each public name is imported
from its module on first use, so `import rsp`, `rsp --help` and `import rsp.core` (torch only) do not pay
for transformers and every engine up front; the `TYPE_CHECKING` imports are what type checkers read.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    name: module
    for module, names in {
        "rsp.core.injection": "Injection NoInjection RandomSoftPrompt",
        "rsp.core.insert": "INSERTION_POINTS PromptTokens build_slotted_batch fill_slots",
        "rsp.core.sampler": "RSPSampler",
        "rsp.core.seeds": "derive_seed",
        "rsp.core.stats": "EmbeddingStats fit_embedding_stats",
        "rsp.engines.base": "Completion SamplingConfig",
        "rsp.engines.hf": "HFEngine",
        "rsp.engines.hook": "RSPHandle attach",
        "rsp.evaluation": "EvalConfig run_eval",
        "rsp.generation": "GenerationOutput Generator Sample generate",
        "rsp.methods": "RSPConfig build_method method_names register_method",
        "rsp.metrics.passk": "maj_at_k pass_at_k pass_at_k_curve",
        "rsp.metrics.stats": "bootstrap_ci paired_comparison",
        "rsp.models.embeddings": "embedding_stats",
        "rsp.models.loading": "LoadedModel load_model wrap_model",
        "rsp.tasks.base": "Problem Task",
        "rsp.tasks.grading": "Grader extract_answer",
        "rsp.tasks.prompts": "PromptBuilder",
        "rsp.tasks.registry": "load_task",
    }.items()
    for name in names.split()
}

# every subpackage and module, reachable as an attribute of `rsp` without importing it first (`rsp.models...`)
_SUBMODULES = frozenset(m.name for m in pkgutil.iter_modules(__path__))

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

if TYPE_CHECKING:
    from rsp.core.injection import Injection, NoInjection, RandomSoftPrompt
    from rsp.core.insert import INSERTION_POINTS, PromptTokens, build_slotted_batch, fill_slots
    from rsp.core.sampler import RSPSampler
    from rsp.core.seeds import derive_seed
    from rsp.core.stats import EmbeddingStats, fit_embedding_stats
    from rsp.engines.base import Completion, SamplingConfig
    from rsp.engines.hf import HFEngine
    from rsp.engines.hook import RSPHandle, attach
    from rsp.evaluation import EvalConfig, run_eval
    from rsp.generation import GenerationOutput, Generator, Sample, generate
    from rsp.methods import RSPConfig, build_method, method_names, register_method
    from rsp.metrics.passk import maj_at_k, pass_at_k, pass_at_k_curve
    from rsp.metrics.stats import bootstrap_ci, paired_comparison
    from rsp.models.embeddings import embedding_stats
    from rsp.models.loading import LoadedModel, load_model, wrap_model
    from rsp.tasks.base import Problem, Task
    from rsp.tasks.grading import Grader, extract_answer
    from rsp.tasks.prompts import PromptBuilder
    from rsp.tasks.registry import load_task


if not TYPE_CHECKING:  # hidden from type checkers, which would otherwise type every unknown `rsp.X` as Any

    def __getattr__(name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module), name)
            globals()[name] = value  # later lookups do not come back here
            return value
        if name in _SUBMODULES:
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})

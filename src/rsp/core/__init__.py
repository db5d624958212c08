"""Framework-free RSP maths: embedding statistics, seeded sampling, insertion into prompts."""

from rsp.core.injection import Injection, NoInjection, RandomSoftPrompt
from rsp.core.insert import INSERTION_POINTS, PromptTokens, SlottedBatch, build_slotted_batch, fill_slots
from rsp.core.sampler import RSPSampler
from rsp.core.seeds import derive_seed
from rsp.core.stats import EmbeddingStats, fit_embedding_stats

__all__ = [
    "INSERTION_POINTS",
    "EmbeddingStats",
    "Injection",
    "NoInjection",
    "PromptTokens",
    "RSPSampler",
    "RandomSoftPrompt",
    "SlottedBatch",
    "build_slotted_batch",
    "derive_seed",
    "fill_slots",
    "fit_embedding_stats",
]

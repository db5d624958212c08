"""Baselines and controls for the RSP claim: trained soft prompts, injection controls and the grid
sweep (importing `rsp.baselines.controls` registers the controls with `rsp.methods`)."""

from rsp.baselines.controls import (
    EmbeddingNoise,
    MeanVector,
    SoftPromptInjection,
    TokenRows,
    TokenString,
    text_token_pool,
)
from rsp.baselines.soft_prompt import SoftPrompt, SoftPromptTrainConfig, load_soft_prompt, train_soft_prompt

__all__ = [
    "EmbeddingNoise",
    "MeanVector",
    "SoftPrompt",
    "SoftPromptInjection",
    "SoftPromptTrainConfig",
    "TokenRows",
    "TokenString",
    "load_soft_prompt",
    "text_token_pool",
    "train_soft_prompt",
]

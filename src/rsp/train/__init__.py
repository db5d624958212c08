"""RSP-DAPO: reinforcement learning whose rollouts carry Random Soft Prompts.

`RSPGRPOTrainer` (TRL's GRPOTrainer with a fresh RSP per rollout) is imported on first use, so that
`import rsp.train` does not pull in TRL.
"""

from typing import Any

from rsp.train.config import DAPOConfig, DAPOConfigError

__all__ = ["DAPOConfig", "DAPOConfigError", "RSPGRPOTrainer"]


def __getattr__(name: str) -> Any:
    if name == "RSPGRPOTrainer":
        from rsp.train.trl_rsp import _grpo_trainer_class

        return _grpo_trainer_class()
    raise AttributeError(f"module 'rsp.train' has no attribute {name!r}")

"""RSP-DAPO: reinforcement learning whose rollouts carry Random Soft Prompts."""

from rsp.train.config import DAPOConfig, DAPOConfigError

__all__ = ["DAPOConfig", "DAPOConfigError"]

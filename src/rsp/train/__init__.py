"""RSP-DAPO: reinforcement learning whose rollouts carry Random Soft Prompts.

The native trainer is `rsp.train.dapo`; TRL's GRPOTrainer with a fresh RSP per rollout is
`rsp.integrations.trl.RSPGRPOTrainer`, with the other integrations (it needs the `train` extra).
"""

from rsp.train.config import DAPOConfig, DAPOConfigError

__all__ = ["DAPOConfig", "DAPOConfigError"]

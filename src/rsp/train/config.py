"""The RSP-DAPO run configuration: one dataclass, saved with every run so a resume can check it; each
field is a flag of `rsp train` and a key of its `--config` file (the keys of the runs already written)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

from rsp.config import ModelArgs, option, require, require_choice, require_min
from rsp.core.insert import INSERTION_POINTS

TRAINERS = ("native", "trl")
_MODEL, _TASK, _RSP, _DAPO = "model", "task", "injection", "DAPO"
_REWARD, _LORA, _RUN = "reward", "LoRA", "run"


class DAPOConfigError(ValueError):
    """A setting is out of range or inconsistent with another; the message names it and its flag."""


@dataclass
class DAPOConfig(ModelArgs):
    """Everything that determines an RSP-DAPO run (saved as the run's config.json, checked on resume)."""

    dtype: str = option("float32", "float32, bfloat16, float16 or auto", group=_MODEL)
    task: str = option("arith", "the rsp task trained on (arith, gsm8k, a .jsonl path, ...)", group=_TASK)
    arith_steps: int = option(2, "synthetic task: operations per problem", group=_TASK)
    arith_max_value: int = option(20, "synthetic task: size of numbers", group=_TASK)
    train_problems: int = option(512, "problems in the training set", group=_TASK)
    rsp_length: int = option(4, "L, vectors per RSP per rollout (0 = plain DAPO)", group=_RSP)
    rsp_position: str = option(
        "after_generation_prompt", "insertion point of the vectors", choices=INSERTION_POINTS, group=_RSP
    )
    rsp_scale: float = option(1.0, "multiplier on the fitted standard deviation", group=_RSP)
    group_size: int = option(8, "rollouts per prompt (a group; advantages are relative to it)", group=_DAPO)
    prompts_per_step: int = option(4, "prompts (groups) per optimisation step", group=_DAPO)
    steps: int = option(40, "optimisation steps", group=_DAPO)
    lr: float = option(1e-5, "learning rate", group=_DAPO)
    weight_decay: float = option(0.0, "AdamW weight decay", group=_DAPO)
    max_grad_norm: float = option(1.0, "gradient clipping norm", group=_DAPO)
    updates_per_batch: int = option(
        1, "updates per rollout batch (>1 reuses it: old != current and clipping acts)", group=_DAPO
    )
    micro_batch_size: int = option(
        4, "rollouts per forward/backward; gradients are accumulated (0 = all at once)", group=_DAPO
    )
    epsilon_low: float = option(0.2, "lower clip of the ratio: 1 - epsilon_low", group=_DAPO)
    epsilon_high: float = option(0.28, "upper clip of the ratio (clip-higher): 1 + epsilon_high", group=_DAPO)
    beta: float = option(0.0, "KL coefficient to a frozen reference (0 = no KL, DAPO's choice)", group=_DAPO)
    max_new_tokens: int = option(64, "tokens per rollout at most", group=_DAPO)
    overlong_buffer: int = option(16, "overlong reward shaping buffer in tokens (0 = off)", group=_REWARD)
    overlong_penalty: float = option(1.0, "overlong reward shaping: penalty at the limit", group=_REWARD)
    mask_truncated: bool = option(False, "leave truncated rollouts out of the loss", group=_REWARD)
    reward_correct: float = option(1.0, "reward of a correct answer", group=_REWARD)
    reward_wrong: float = option(-1.0, "reward of a wrong answer", group=_REWARD)
    grader_timeout: float = option(5.0, "seconds per answer check", group=_REWARD)
    max_extra_rounds: int = option(
        2,
        "dynamic sampling: extra rounds of prompts when a step's groups all have equal rewards",
        group=_DAPO,
    )
    temperature: float = option(1.0, "rollout sampling temperature (> 0)", group=_DAPO)
    lora: bool = option(True, "train LoRA adapters (--no-lora: full fine-tuning)", group=_LORA)
    lora_r: int = option(16, "LoRA rank", group=_LORA)
    lora_alpha: int = option(32, "LoRA alpha", group=_LORA)
    lora_dropout: float = option(0.0, "LoRA dropout", group=_LORA)
    lora_target_modules: list[str] = option(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        help="modules that get adapters",
        group=_LORA,
    )
    seed: int = option(0, "the run's base seed (problems, every rollout's RSP seed, sampling)", group=_RUN)
    checkpoint_every: int = option(10, "steps between checkpoints", group=_RUN)
    trainer: str = option(
        "native",
        "native (plain torch, DAPO refill) or trl (GRPOTrainer subclass, masking form)",
        choices=TRAINERS,
        group=_RUN,
    )
    # trainer=trl only: GRPOConfig fields set on top of the mapping above (bf16, gradient_accumulation_steps,
    # report_to, vllm options, ...); left out of to_dict() when empty, so older run directories still resume.
    trl_args: dict = option(
        default_factory=dict,
        help="--trainer trl only: TRL GRPOConfig fields applied on top of the mapping, as a JSON object "
        '(\'{"bf16": true, "gradient_accumulation_steps": 2}\') or KEY=VALUE; merged',
        metavar="JSON|KEY=VALUE",
        group=_RUN,
    )

    def validate(self) -> DAPOConfig:
        need = partial(require, error=DAPOConfigError)
        require_choice(self.rsp_position, "rsp_position", INSERTION_POINTS, DAPOConfigError)
        at_least = partial(require_min, self, error=DAPOConfigError)
        at_least(0, "rsp_length", "micro_batch_size", "epsilon_high", "beta", "max_extra_rounds")
        at_least(0, "overlong_penalty")
        at_least(1, "prompts_per_step", "steps", "updates_per_batch", "max_new_tokens", "checkpoint_every")
        at_least(2, "group_size")  # advantages are relative to the group
        at_least(0, "rsp_scale", "lr", "temperature", strict=True)
        need(0 <= self.epsilon_low < 1, "epsilon_low", f"must be in [0, 1), got {self.epsilon_low}")
        buffer, limit = self.overlong_buffer, self.max_new_tokens
        need(0 <= buffer < limit, "overlong_buffer", f"must be in [0, max_new_tokens={limit}), got {buffer}")
        right, wrong = self.reward_correct, self.reward_wrong
        need(right > wrong, "reward_correct", f"({right}) must exceed reward_wrong ({wrong})")
        problems, per_step = self.train_problems, self.prompts_per_step
        need(problems >= per_step, "train_problems", f"({problems}) must be >= prompts_per_step ({per_step})")
        require_choice(self.trainer, "trainer", TRAINERS, DAPOConfigError)
        need(not self.trl_args or self.trainer == "trl", "trl_args", "apply to --trainer trl only")
        if self.lora:
            at_least(1, "lora_r")
            need(bool(self.lora_target_modules), "lora_target_modules", "must name at least one module")
        return self

    def lora_config(self):
        """PEFT's `LoraConfig` of the `lora_*` settings, or None for full fine-tuning (`--no-lora`)."""
        if not self.lora:
            return None
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=list(self.lora_target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["lora_target_modules"] = list(self.lora_target_modules)
        if not data["trl_args"]:
            del data["trl_args"]
        return data

"""The RSP-DAPO run configuration: one dataclass, saved with every run so a resume can check it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

POSITIONS = ("after_generation_prompt", "end_of_user_turn", "prepend")


class DAPOConfigError(ValueError):
    """A setting is out of range or inconsistent with another."""


@dataclass
class DAPOConfig:
    model: str = "smollm2-135m-instruct"
    dtype: str = "float32"
    device: str = "cpu"
    task: str = "arith"
    arith_steps: int = 2
    arith_max_value: int = 20
    train_problems: int = 512
    rsp_length: int = 4  # 0 = plain DAPO
    rsp_position: str = "after_generation_prompt"
    rsp_scale: float = 1.0
    group_size: int = 8
    prompts_per_step: int = 4
    steps: int = 40
    lr: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    updates_per_batch: int = 1  # >1 reuses each rollout batch (then old != current and clipping acts)
    micro_batch_size: int = 4  # rollouts per forward/backward; gradients are accumulated (0 = all at once)
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28
    beta: float = 0.0
    max_new_tokens: int = 64
    overlong_buffer: int = 16  # 0 disables overlong reward shaping
    overlong_penalty: float = 1.0
    mask_truncated: bool = False
    reward_correct: float = 1.0
    reward_wrong: float = -1.0
    grader_timeout: float = 5.0
    max_extra_rounds: int = 2
    temperature: float = 1.0
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    seed: int = 0
    checkpoint_every: int = 10
    trainer: str = "native"  # native (plain torch, DAPO refill) or trl (GRPOTrainer subclass, masking form)
    # trainer=trl only: GRPOConfig fields set on top of the mapping above (bf16, gradient_accumulation_steps,
    # report_to, vllm options, ...); left out of to_dict() when empty, so older run directories still resume.
    trl_args: dict = field(default_factory=dict)

    def validate(self) -> DAPOConfig:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise DAPOConfigError(msg)

        need(self.rsp_length >= 0, f"rsp_length must be >= 0 (0 = plain DAPO), got {self.rsp_length}")
        need(
            self.rsp_position in POSITIONS,
            f"rsp_position must be one of {', '.join(POSITIONS)}, got {self.rsp_position!r}",
        )
        need(self.rsp_scale > 0, f"rsp_scale must be > 0, got {self.rsp_scale}")
        need(
            self.group_size >= 2,
            f"group_size must be >= 2 (advantages are relative to the group), got {self.group_size}",
        )
        need(self.prompts_per_step >= 1, f"prompts_per_step must be >= 1, got {self.prompts_per_step}")
        need(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(
            self.micro_batch_size >= 0,
            f"micro_batch_size must be >= 0 (0 = whole batch), got {self.micro_batch_size}",
        )
        need(self.updates_per_batch >= 1, f"updates_per_batch must be >= 1, got {self.updates_per_batch}")
        need(0 <= self.epsilon_low < 1, f"epsilon_low must be in [0, 1), got {self.epsilon_low}")
        need(self.epsilon_high >= 0, f"epsilon_high must be >= 0, got {self.epsilon_high}")
        need(self.beta >= 0, f"beta (KL coefficient) must be >= 0, got {self.beta}")
        need(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        need(
            0 <= self.overlong_buffer < self.max_new_tokens,
            f"overlong_buffer must be in [0, max_new_tokens={self.max_new_tokens}), got {self.overlong_buffer}",
        )
        need(self.overlong_penalty >= 0, f"overlong_penalty must be >= 0, got {self.overlong_penalty}")
        need(
            self.reward_correct > self.reward_wrong,
            f"reward_correct ({self.reward_correct}) must exceed reward_wrong ({self.reward_wrong})",
        )
        need(self.max_extra_rounds >= 0, f"max_extra_rounds must be >= 0, got {self.max_extra_rounds}")
        need(self.temperature > 0, f"temperature must be > 0 for sampled rollouts, got {self.temperature}")
        need(
            self.train_problems >= self.prompts_per_step,
            f"train_problems ({self.train_problems}) must be >= prompts_per_step ({self.prompts_per_step})",
        )
        need(self.trainer in ("native", "trl"), f"trainer must be native or trl, got {self.trainer!r}")
        need(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        need(
            isinstance(self.trl_args, dict),
            f"trl_args must be a mapping of GRPOConfig fields, got {self.trl_args!r}",
        )
        need(not self.trl_args or self.trainer == "trl", "trl_args apply to --trainer trl only")
        if self.lora:
            need(self.lora_r >= 1, f"lora_r must be >= 1, got {self.lora_r}")
            need(bool(self.lora_target_modules), "lora_target_modules must name at least one module")
        return self

    def to_dict(self) -> dict:
        data = asdict(self)
        if not data["trl_args"]:
            del data["trl_args"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DAPOConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DAPOConfigError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**data).validate()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> DAPOConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DAPOConfigError(f"cannot read config {path}: {exc}") from None
        if not isinstance(data, dict):
            raise DAPOConfigError(f"config {path} must hold a JSON object")
        return cls.from_dict(data.get("config", data) if "kind" in data else data)

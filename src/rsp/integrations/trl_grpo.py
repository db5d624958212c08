"""`python -m rsp.integrations.trl_grpo --config configs/recipes/NAME.yaml`: TRL's GRPO recipe script, every
rollout with its own RSP.

Why this shape: it is TRL's own `trl/scripts/grpo.py` (and open-r1's YAML recipes) with `RSPGRPOTrainer`,
so a TRL user's recipe carries over and every `GRPOConfig` field means what it means in TRL. `TrlParser`
reads `RSPArguments`, `GRPOConfig`, `ModelConfig` and `RSPScriptArguments` from one YAML file; any field
can be overridden on the command line. Multi-GPU: `accelerate launch --config_file
configs/accelerate/multi_gpu.yaml -m rsp.integrations.trl_grpo ...`.
"""

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from datasets import Dataset, load_dataset
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOConfig, ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config
from trl.rewards import (
    accuracy_reward,
    get_soft_overlong_punishment,
    reasoning_accuracy_reward,
    think_format_reward,
)

from rsp.integrations.trl import RSPGRPOTrainer, chat_prompt, completion_text
from rsp.methods import RSPConfig
from rsp.models.loading import converted_path
from rsp.renamed import renamed_flag
from rsp.tasks.grading import Grader
from rsp.tasks.registry import load_task

# name -> (script arguments, GRPOConfig) -> reward function
REWARD_FUNCS: dict[str, Callable[[Any, GRPOConfig], Callable]] = {
    "rsp_accuracy_reward": lambda args, _: rsp_accuracy_reward(args.grader_timeout),
    "accuracy_reward": lambda *_: accuracy_reward,
    "reasoning_accuracy_reward": lambda *_: reasoning_accuracy_reward,
    "think_format_reward": lambda *_: think_format_reward,
    "soft_overlong_punishment": lambda args, training: soft_overlong_punishment(args, training),
}


@dataclass
class RSPArguments:
    """The RSP of every rollout: the fields of `rsp.RSPConfig`, prefixed so they never clash with TRL's."""

    rsp_length: int = field(default=4, metadata={"help": "L, random vectors per rollout (0 = plain GRPO)"})
    rsp_scale: float = field(default=1.0, metadata={"help": "multiplies the fitted standard deviation"})
    rsp_position: Literal["after_generation_prompt", "end_of_user_turn", "prepend"] = field(
        default="after_generation_prompt",
        metadata={"help": "before the first generated token, after the last user message, or at the start"},
    )
    method: str = field(default="rsp", metadata={"help": "rsp, or a control from `rsp methods`"})
    rsp_stats_rows: Literal["all", "tokens"] = field(
        default="all", metadata={"help": "fit the Gaussian on all embedding rows or the real tokens'"}
    )
    rsp_stats_mean: Literal["scalar", "per_dim"] = field(
        default="scalar", metadata={"help": "isotropic scalar mean, or one mean per dimension"}
    )

    def to_rsp_config(self):
        return RSPConfig.from_flat(self, self.method).validate()


@dataclass
class RSPScriptArguments(ScriptArguments):
    """TRL's script arguments (`dataset_name`, ...) plus an rsp task as the data source, and the rewards."""

    task: str | None = field(
        default=None,
        metadata={
            "help": "an rsp task (arith, gsm8k, math500, or a question/answer .jsonl) as the dataset "
            "(`prompt`, `solution`); overrides dataset_name"
        },
    )
    task_split: str = field(default="train", metadata={"help": "split of the rsp task"})
    task_limit: int | None = field(default=None, metadata={"help": "use at most this many problems"})
    arith_steps: int = field(default=2, metadata={"help": "arith task: operations per problem"})
    arith_max_value: int = field(default=20, metadata={"help": "arith task: largest operand"})
    arith_n: int = field(default=512, metadata={"help": "arith task: number of generated problems"})
    prompt_format: Literal["conversational", "standard"] = field(
        default="conversational", metadata={"help": "task prompts as chat messages or as plain strings"}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "system message (conversational)"})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["rsp_accuracy_reward"],
        metadata={"help": f"{', '.join(REWARD_FUNCS)}, or module.function; all read the `solution` column"},
    )
    overlong_buffer: int = field(
        default=0, metadata={"help": "soft_overlong_punishment: DAPO's buffer before max_completion_length"}
    )
    mask_constant_groups: bool = field(
        default=True,
        metadata={"help": "DAPO dynamic sampling (masking): all-equal-reward groups leave the loss"},
    )
    grader_timeout: float = field(default=5.0, metadata={"help": "rsp_accuracy_reward: seconds per grading"})


def task_dataset(args: RSPScriptArguments, seed: int):
    """A TRL-format dataset (`prompt`, `solution`, `problem_id`) from an rsp task."""
    arith = {k: getattr(args, k) for k in ("arith_steps", "arith_max_value", "arith_n")}
    name = cast(str, args.task)  # load_train_dataset checked it
    task = load_task(name, split=args.task_split, limit=args.task_limit, seed=seed, **arith)
    rows = []
    for p in task.problems:
        prompt: Any = chat_prompt(p.question, args.system_prompt or None)
        if args.prompt_format == "standard":
            prompt = prompt[-1]["content"]
        rows.append({"prompt": prompt, "solution": p.answer, "problem_id": p.id})
    return Dataset.from_list(rows)


def load_train_dataset(args: RSPScriptArguments, seed: int):
    if args.task:
        return task_dataset(args, seed)
    if not args.dataset_name:
        what = "a TRL dataset: Hub id, or a local .jsonl/.json/.parquet file or folder"
        raise ValueError(f"set `task` (an rsp task) or `dataset_name` ({what})")
    path = os.path.expanduser(args.dataset_name)
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1]
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(ext)
        if kind is None:
            raise ValueError(f"cannot tell the format of {path}; use .jsonl, .json, .parquet or .csv")
        return load_dataset(kind, data_files={args.dataset_train_split: path})[args.dataset_train_split]
    return load_dataset(args.dataset_name, name=args.dataset_config)[args.dataset_train_split]


def rsp_accuracy_reward(timeout: float):
    """Correctness (1 / 0) from rsp's grader against the `solution` column (string or chat completions)."""
    grader = Grader(timeout=timeout)

    def rsp_accuracy_reward(completions, solution, **_):
        pairs = zip(completions, solution, strict=True)
        return [float(grader.grade(completion_text(c), str(s)).correct) for c, s in pairs]

    # A plain function, as TRL takes rewards (it logs their __name__), carrying close() for the grader's
    # worker process; mypy does not model attributes set on a function object.
    rsp_accuracy_reward.close = grader.close  # type: ignore[attr-defined]
    return rsp_accuracy_reward


def soft_overlong_punishment(args: RSPScriptArguments, training_args: GRPOConfig):
    if training_args.max_completion_length is None:
        raise ValueError("soft_overlong_punishment needs max_completion_length")
    return get_soft_overlong_punishment(training_args.max_completion_length, args.overlong_buffer)


def reward_functions(args: RSPScriptArguments, training_args: GRPOConfig) -> list:
    funcs = []
    for name in args.reward_funcs:
        if name in REWARD_FUNCS:
            funcs.append(REWARD_FUNCS[name](args, training_args))
        elif "." in name:
            module, attr = name.rsplit(".", 1)
            sys.path.insert(0, os.getcwd())
            funcs.append(getattr(importlib.import_module(module), attr))
        else:
            known = ", ".join(REWARD_FUNCS)
            raise ValueError(f"unknown reward function {name!r}; use one of {known} or module.func")
    if not funcs:
        raise ValueError("reward_funcs is empty")
    return funcs


def parse(argv: list[str] | None = None):
    """(script_args, training_args, model_args, rsp_args) from `--config FILE` and flags, as TRL parses
    them; a flag renamed before the first release (`--rsp_seed`) is an error naming the new one."""
    parser = TrlParser(
        # TRL types dataclass_types with DataClassType, a NewType over Any that no class matches unwrapped
        (RSPScriptArguments, GRPOConfig, ModelConfig, RSPArguments),  # type: ignore[arg-type]
        prog="python -m rsp.integrations.trl_grpo",
    )
    for arg in sys.argv[1:] if argv is None else argv:
        renamed = renamed_flag(arg)
        if renamed and arg.split("=", 1)[0] not in parser._option_string_actions:
            parser.error(renamed)
    return parser.parse_args_and_config(args=argv)


def main(argv: list[str] | None = None):
    script_args, training_args, model_args, rsp_args = parse(argv)
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    rewards = reward_functions(script_args, training_args)
    trainer = RSPGRPOTrainer(
        model=converted_path(model_args.model_name_or_path),
        reward_funcs=rewards,
        args=training_args,
        train_dataset=load_train_dataset(script_args, training_args.seed),
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
        rsp_config=rsp_args.to_rsp_config(),
        mask_constant_groups=script_args.mask_constant_groups,
    )
    out, resume = training_args.output_dir, training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):  # the latest checkpoint in output_dir
        resume = get_last_checkpoint(out) if os.path.isdir(out) else None
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        for func in rewards:
            if callable(getattr(func, "close", None)):
                func.close()
    trainer.save_model(out)
    trainer.accelerator.print(f"rsp.integrations.trl_grpo: model saved to {out}")
    return trainer


if __name__ == "__main__":
    main()

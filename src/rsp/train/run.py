"""A resumable RSP-DAPO run: metrics JSONL, checkpoints, curves, and a config check on restart.

Checkpoints are read with `torch.load(weights_only=True)`: tensors and plain Python values only. A run
directory can come from anywhere, and a full unpickle would run whatever code a crafted file names.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pickle
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import TrainerCallback

from rsp.models.loading import LoadedModel, load_model
from rsp.records import ROLLOUTS, RolloutRecord, append_rollouts, read_rollouts, write_rollouts
from rsp.reporting import pyplot
from rsp.runio import (
    JsonlAppender,
    RunDirError,
    atomic_write_text,
    prepare_run_dir,
    read_jsonl_records,
    read_run_config,
)
from rsp.tasks.grading import Grader
from rsp.tasks.prompts import PromptBuilder
from rsp.tasks.registry import load_task
from rsp.train.config import DAPOConfig
from rsp.train.dapo import DAPOTrainer, RewardFn

CURVE_KEYS = ("reward_mean", "accuracy", "frac_groups_kept", "entropy", "clip_fraction", "response_length")


class CheckpointError(RunDirError):
    """A checkpoint that cannot be loaded safely (or at all)."""


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / "checkpoints").glob("step_*.pt"))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"refusing to resume from {path}: it holds more than tensors and plain values "
            f"({first}); rsp checkpoints never do, so it was not written by rsp train. Move it "
            "away (the run resumes from the previous checkpoint) or start a new --out"
        ) from None
    needed = {"step", "cursor", "trainable", "optimizer", "torch_rng"}
    if not isinstance(state, dict) or not needed <= state.keys():
        raise CheckpointError(f"{path} is not an rsp train checkpoint")
    return state


def build_problems_and_prompts(lm: LoadedModel, cfg: DAPOConfig):
    """(problems, prompt_of, builder): the training problems, their cached `PromptTokens` (native trainer),
    and the `PromptBuilder` (the TRL path turns problems into standard TRL prompts with it)."""
    arith = {k: getattr(cfg, k) for k in ("arith_steps", "arith_max_value")}
    n = cfg.train_problems
    task = load_task(cfg.task, split="train", limit=n, arith_n=n, seed=cfg.seed, **arith)
    builder = PromptBuilder.for_task(lm.tokenizer, task)
    return task.problems, functools.cache(builder.build), builder


def train(
    cfg: DAPOConfig,
    out: Path,
    *,
    lm: LoadedModel | None = None,
    reward_fn: RewardFn | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    save_merged: bool = False,
) -> list[dict]:
    """Run (or resume) training into `out`; `stop_after` ends early after that many total steps (tests).
    `save_merged` also writes `out/merged/`, a model directory (LoRA merged in) `rsp eval --model` loads."""
    cfg.validate()
    out = Path(out)
    resuming = prepare_run_dir(out, cfg.to_dict(), kind="train")
    torch.manual_seed(cfg.seed)
    if lm is None:
        lm = load_model(cfg.model, dtype=cfg.dtype, device=process_device(cfg.device))
    close = None
    if reward_fn is None:  # correctness from the project's grader (a subprocess with a timeout)
        grader = Grader(timeout=cfg.grader_timeout)
        reward_fn, close = (lambda text, gold: grader.grade(text, gold).correct), grader.close
    try:
        problems, prompt_of, builder = build_problems_and_prompts(lm, cfg)
        if cfg.trainer == "trl":
            return train_with_trl(
                cfg, out, lm, problems, builder, reward_fn, resuming, save_merged, stop_after
            )
        trainer = DAPOTrainer(lm, cfg, problems, prompt_of, reward_fn, stop_strings=builder.stop_strings)
        metrics_path = out / "metrics.jsonl"
        rollouts_path = out / ROLLOUTS
        ckpt = latest_checkpoint(out) if resuming else None
        records = []
        if ckpt is not None:
            trainer.load_state_dict(load_checkpoint(ckpt))
            # Steps logged after the checkpoint will be redone with the same data and seeds: drop them.
            records = [r for r in read_jsonl_records(metrics_path) if r["step"] <= trainer.step]
            atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in records))
            version = read_run_config(out, kind="train").schema_version
            rollouts = read_rollouts(rollouts_path, repair=True, version=version)
            write_rollouts(rollouts_path, [r for r in rollouts if r["step"] <= trainer.step])
        else:
            for path in (metrics_path, rollouts_path):
                path.unlink(missing_ok=True)
        log = JsonlAppender(metrics_path)
        end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        with tqdm(total=cfg.steps, initial=trainer.step, desc="rsp-dapo", disable=not progress) as bar:
            while trainer.step < end:
                m = trainer.train_step()
                append_rollouts(rollouts_path, rollout_records(trainer, m["step"]))
                log.append([m])
                records.append(m)
                bar.update(1)
                bar.set_postfix(
                    reward=f"{m['reward_mean']:.2f}",
                    acc=f"{m['accuracy']:.2f}",
                    kept=f"{m['frac_groups_kept']:.2f}",
                )
                if trainer.step % cfg.checkpoint_every == 0 or trainer.step == cfg.steps:
                    save_checkpoint(trainer, out)
    finally:
        if close is not None:
            close()
    plot_curves(records, out / "curves.png")
    if trainer.step == cfg.steps:
        if trainer.peft_model is not None:
            trainer.peft_model.save_pretrained(str(out / "adapter"))
        if save_merged:
            model = trainer.peft_model if trainer.peft_model is not None else trainer.lm.model
            write_merged(model, trainer.lm.tokenizer, out / "merged")
    return records


def write_merged(model, tokenizer, path: Path) -> None:
    """A plain model directory (LoRA merged in when present) that `rsp eval --model PATH` loads."""
    model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))


def rollout_records(trainer: DAPOTrainer, step: int) -> list[RolloutRecord]:
    """One record per rollout; `rsp_seed` rebuilds its RSP exactly (`injection.rows([rsp_seed])`)."""
    return [
        RolloutRecord(
            step=step,
            problem_id=r.problem_id,
            rsp_seed=r.rsp_seed,
            completion=r.text,
            token_ids=list(r.token_ids),
            finish_reason=r.finish_reason,
            correct=r.correct,
            reward=r.reward,
            advantage=r.advantage,
            kept=kept,
        )
        for r, kept in zip(trainer.last_rollouts, trainer.last_kept, strict=True)
    ]


def save_checkpoint(trainer: DAPOTrainer, out: Path, keep: int = 2) -> Path:
    ckdir = out / "checkpoints"
    ckdir.mkdir(exist_ok=True)
    path = ckdir / f"step_{trainer.step:06d}.pt"
    tmp = ckdir / f".{path.name}.tmp"
    torch.save(trainer.state_dict(), tmp)
    tmp.replace(path)  # a kill mid-save never leaves a half-written "latest" checkpoint
    for old in sorted(ckdir.glob("step_*.pt"))[:-keep]:
        old.unlink()
    return path


def plot_curves(records: list[dict], path: Path) -> None:
    if not records:
        return
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    steps = [r["step"] for r in records]
    for ax, key in zip(axes.flat, CURVE_KEYS, strict=True):
        ax.plot(steps, [r.get(key, math.nan) for r in records], marker="o", markersize=2)
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def process_device(device: str, env: Mapping[str, str] | None = None) -> str:
    """Under `accelerate launch`/torchrun each process loads onto its own GPU (LOCAL_RANK), not all cuda:0."""
    environ: Mapping[str, str] = os.environ if env is None else env
    if device == "cuda" and "LOCAL_RANK" in environ:
        return f"cuda:{int(environ['LOCAL_RANK'])}"
    return device


# TRL's own log keys are kept; the native trainer's names are added where TRL has the same quantity.
TRL_ALIASES = {
    "reward_mean": "reward",
    "response_length": "completions/mean_length",
    "frac_groups_kept": "rsp/frac_groups_kept",
}


def train_with_trl(
    cfg: DAPOConfig,
    out: Path,
    lm: LoadedModel,
    problems,
    builder,
    reward_fn: RewardFn,
    resuming: bool,
    save_merged: bool,
    stop_after: int | None,
) -> list[dict]:
    """The TRL path (`--trainer trl`): RSPGRPOTrainer with TRL's own checkpoints under out/trl/;
    metrics.jsonl gets one record per optimizer step as TRL logs it (main process only), and a resume drops
    the records after its checkpoint, as on the native path."""
    from rsp.integrations.trl import build_trl_trainer  # TRL: the `train` extra

    metrics_path, trl_dir = out / "metrics.jsonl", out / "trl"

    class StepLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "loss" in logs:
                aliases = {k: logs[v] for k, v in TRL_ALIASES.items() if v in logs}
                rest = {k: v for k, v in logs.items() if k != "step"}
                JsonlAppender(metrics_path).append([{"step": int(state.global_step), **aliases, **rest}])

        def on_step_end(self, args, state, control, **kwargs):
            if stop_after is not None and state.global_step >= stop_after:
                control.should_training_stop = True
                control.should_save = True  # so the rerun resumes from here

    saving = {"save_strategy": "steps", "save_steps": cfg.checkpoint_every, "save_total_limit": 2}
    trainer = build_trl_trainer(cfg, lm, problems, builder, reward_fn, str(trl_dir), **saving)
    trainer.add_callback(StepLog())
    ckpts = sorted(trl_dir.glob("checkpoint-*"), key=lambda d: int(d.name.split("-")[-1])) if resuming else []
    if trainer.accelerator.is_main_process:
        done = int(ckpts[-1].name.split("-")[-1]) if ckpts else 0
        kept = [r for r in read_jsonl_records(metrics_path) if r["step"] <= done] if ckpts else []
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
    trainer.accelerator.wait_for_everyone()
    trainer.train(resume_from_checkpoint=str(ckpts[-1]) if ckpts else None)
    finished = trainer.state.global_step >= cfg.steps
    if finished:
        # Called on every rank: Trainer.save_model gathers sharded weights (ZeRO-3 / FSDP) and writes on the
        # main process only. LoRA -> the adapter; full fine-tuning -> the whole model.
        trainer.save_model(str(out / ("adapter" if cfg.lora else "model")))
    records = read_jsonl_records(metrics_path)
    if not trainer.accelerator.is_main_process:
        return records
    plot_curves(records, out / "curves.png")  # the CLI points at it; keys TRL lacks are plotted as NaN
    if finished and save_merged:
        if trainer.accelerator.num_processes > 1:
            print(
                "rsp train: --save-merged is skipped under multi-process training; merge OUT/adapter into "
                "the base model afterwards in one process",
                file=sys.stderr,
            )
        else:
            write_merged(trainer.model, lm.tokenizer, out / "merged")
    return records

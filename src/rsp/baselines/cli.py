"""`rsp sweep` and `rsp train-soft-prompt`: flags from config dataclasses, parsed by `rsp.config`.

The sweep's settings are `rsp eval`'s (its `--methods` is the method axis) without the single values its
grid replaces, plus the grid (`SweepGrid`) and where to write (`OutputOptions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from rsp.baselines.soft_prompt import SoftPromptTrainConfig, train_soft_prompt
from rsp.baselines.sweep import NOT_SWEPT_FLAGS, SweepConfig, SweepGrid, run_sweep
from rsp.config import OutputOptions, RSPArgumentParser, flag_of
from rsp.evaluation import ConfigError, EvalConfig
from rsp.models.loading import load_model

STOP_NOTES = {
    "steps": "",
    "patience": " (early stop: held-out loss stopped improving)",
    "max_seconds": " (stopped at --max-seconds)",
}


def build_sweep_parser() -> RSPArgumentParser:
    return RSPArgumentParser(
        [EvalConfig, SweepGrid, OutputOptions],
        exclude=NOT_SWEPT_FLAGS,
        prog="rsp sweep",
        description="Grid over method x L x scale x temperature on the same problems, with a comparison "
        "table. Every cell is an `rsp eval` run in OUT/cells/<cell>/; rerunning the same command resumes, "
        "and adding grid values extends the sweep without recomputing finished cells. Temperature-only is "
        "always included as the baseline.",
    )


def parse_sweep(argv: Sequence[str]) -> tuple[EvalConfig, SweepGrid, OutputOptions]:
    """The base run (its `methods` are the sweep's method axis), the grid, and the output options."""
    for flag in map(flag_of, NOT_SWEPT_FLAGS):  # `rsp eval`'s single values, which the grid replaces
        if any(a == flag or a.startswith(flag + "=") for a in argv):
            grids = "--rsp-lengths, --rsp-scales and --temperatures"
            raise ConfigError(f"rsp sweep takes grids, not {flag}; use {grids}")
    base, grid, output = build_sweep_parser().parse(list(argv))
    return base, grid, output


def sweep_main(argv: list[str]) -> int:
    base, grid, output = parse_sweep(argv)
    result = run_sweep(SweepConfig.from_configs(base, grid), output.out, progress=not output.quiet)
    out = Path(output.out)
    print((out / "sweep.md").read_text())
    counts = f"cells run now: {len(result.ran)}, already finished: {len(result.skipped)}"
    print(f"{counts}; table: {out / 'sweep.md'} and {out / 'sweep.csv'}; plots: {out / 'plots'}")
    return 0


def build_train_soft_prompt_parser() -> RSPArgumentParser:
    return RSPArgumentParser(
        [SoftPromptTrainConfig, OutputOptions],
        exclude=("extra",),
        prog="rsp train-soft-prompt",
        description="Train L soft-prompt vectors with the model frozen. Writes OUT/soft_prompt.safetensors "
        "(use with --methods soft-prompt --method-option soft_prompt=PATH), OUT/loss.png and "
        "OUT/history.json.",
    )


def parse_train_soft_prompt(argv: Sequence[str]) -> tuple[SoftPromptTrainConfig, OutputOptions]:
    config, output = build_train_soft_prompt_parser().parse(list(argv))
    return config, output


def train_soft_prompt_main(argv: list[str]) -> int:
    config, output = parse_train_soft_prompt(argv)
    config.validate()
    torch.manual_seed(config.seed)
    lm = load_model(config.model, dtype=config.dtype, device=config.device)
    result = train_soft_prompt(lm, config, output.out, progress=not output.quiet)
    print(
        f"held-out loss {result.initial_val_loss:.4f} (RSP init) -> {result.best_val_loss:.4f} at step "
        f"{result.best_step} of {result.steps_run}{STOP_NOTES[result.stop_reason]}, "
        f"{result.seconds:.0f} s"
    )
    print(f"soft prompt: {result.path}  loss curve: {Path(output.out) / 'loss.png'}")
    print(f"use: rsp eval --methods temperature,soft-prompt --method-option soft_prompt={result.path}")
    return 0

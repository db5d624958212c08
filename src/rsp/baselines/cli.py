"""`rsp sweep` and `rsp train-soft-prompt` (wired into `rsp` by rsp.cli's plugin list)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rsp.baselines.soft_prompt import SoftPromptTrainConfig
from rsp.baselines.sweep import DEFAULT_ALPHAS, DEFAULT_LENGTHS, DEFAULT_METHODS, DEFAULT_TEMPERATURES

STOP_NOTES = {
    "steps": "",
    "patience": " (early stop: held-out loss stopped improving)",
    "max_seconds": " (stopped at --max-seconds)",
}


def _list(text: str, kind: type, flag: str) -> tuple:
    try:
        return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated {kind.__name__} values, got {text!r}") from None


def _joined(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def register(subparsers) -> None:
    from rsp.cli import add_eval_arguments

    p = subparsers.add_parser(
        "sweep",
        help="grid over method x L x alpha x temperature on the same problems, with a comparison table",
        description="Every cell is an `rsp eval` run in OUT/cells/<cell>/; rerunning the same command resumes, "
        "and adding grid values extends the sweep without recomputing finished cells.",
    )
    add_eval_arguments(p)
    # The grid replaces the single-value flags; left unset (None) so that passing one is reported.
    p.set_defaults(rsp_length=None, rsp_scale=None, temperature=None)
    g = p.add_argument_group("grid")
    g.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="methods to compare (temperature-only is always included as the baseline; default: %(default)s)",
    )
    g.add_argument("--lengths", default=_joined(DEFAULT_LENGTHS), help="L values (default: %(default)s)")
    g.add_argument(
        "--alphas",
        default=_joined(DEFAULT_ALPHAS),
        help="std multipliers for RSP methods (default: %(default)s)",
    )
    g.add_argument(
        "--temperatures", default=_joined(DEFAULT_TEMPERATURES), help="0 = greedy (default: %(default)s)"
    )
    p.add_argument("--n", type=int, default=16, help="attempts per problem (default: %(default)s)")
    p.add_argument(
        "--out", required=True, help="sweep directory (resumes / extends if it holds the same base run)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sweep)

    t = subparsers.add_parser(
        "train-soft-prompt",
        help="train L soft-prompt vectors with the model frozen",
        description="Writes OUT/soft_prompt.safetensors (use with --methods soft-prompt "
        "--method-option soft_prompt=PATH), OUT/loss.png and OUT/history.json.",
    )
    d = SoftPromptTrainConfig()
    t.add_argument("--model", default=d.model)
    t.add_argument(
        "--dtype", default=d.dtype, help="training dtype (default: %(default)s; vectors are saved in fp32)"
    )
    t.add_argument("--device", default=d.device)
    t.add_argument("--length", type=int, default=d.length, help="L, number of vectors (default: %(default)s)")
    from rsp.core.insert import INSERTION_POINTS

    t.add_argument("--position", default=d.position, choices=INSERTION_POINTS)
    t.add_argument(
        "--data",
        default=",".join(d.data),
        help="comma-separated train sources: arith, gsm8k, ... (their train splits; default: %(default)s)",
    )
    t.add_argument("--train-size", type=int, default=d.train_size, help="training examples per source")
    t.add_argument(
        "--val-size", type=int, default=d.val_size, help="held-out examples per source (early stopping)"
    )
    t.add_argument("--arith-steps", type=int, default=d.arith_steps)
    t.add_argument("--arith-max-value", type=int, default=d.arith_max_value)
    t.add_argument("--steps", type=int, default=d.steps)
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between held-out evaluations")
    t.add_argument(
        "--patience", type=int, default=d.patience, help="evaluations without improvement before stopping"
    )
    t.add_argument(
        "--min-delta", type=float, default=d.min_delta, help="held-out improvement that counts as better"
    )
    t.add_argument(
        "--max-seconds", type=float, default=None, help="wall-clock budget (best vectors so far are kept)"
    )
    t.add_argument("--max-solution-tokens", type=int, default=d.max_solution_tokens)
    t.add_argument(
        "--init-scale", type=float, default=d.init_scale, help="std multiplier of the RSP initialisation"
    )
    t.add_argument("--prompt-style", default=d.prompt_style, choices=["auto", "chat", "plain"])
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train_soft_prompt)


def cmd_sweep(args: argparse.Namespace) -> int:
    from rsp.baselines.sweep import SweepConfig, run_sweep
    from rsp.cli import eval_config_from_args

    for flag, value in (
        ("--rsp-length", args.rsp_length),
        ("--rsp-scale", args.rsp_scale),
        ("--temperature", args.temperature),
    ):
        if value is not None:
            raise ValueError(f"rsp sweep takes grids, not {flag}; use --lengths, --alphas and --temperatures")
    base = eval_config_from_args(args, methods=("temperature",), rsp_length=0, rsp_scale=1.0, temperature=0.0)
    config = SweepConfig(
        base=base,
        methods=_list(args.methods, str, "--methods"),
        lengths=_list(args.lengths, int, "--lengths"),
        alphas=_list(args.alphas, float, "--alphas"),
        temperatures=_list(args.temperatures, float, "--temperatures"),
    )
    result = run_sweep(config, args.out, progress=not args.quiet)
    out = Path(args.out)
    print((out / "sweep.md").read_text())
    print(
        f"cells run now: {len(result.ran)}, already finished: {len(result.skipped)}; "
        f"table: {out / 'sweep.md'} and {out / 'sweep.csv'}; plots: {out / 'plots'}"
    )
    return 0


def cmd_train_soft_prompt(args: argparse.Namespace) -> int:
    import torch

    from rsp.baselines.soft_prompt import train_soft_prompt
    from rsp.models.loading import load_model

    config = SoftPromptTrainConfig(
        model=args.model,
        length=args.length,
        position=args.position,
        data=_list(args.data, str, "--data"),
        train_size=args.train_size,
        val_size=args.val_size,
        arith_steps=args.arith_steps,
        arith_max_value=args.arith_max_value,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_every=args.eval_every,
        patience=args.patience,
        min_delta=args.min_delta,
        seed=args.seed,
        prompt_style=args.prompt_style,
        max_solution_tokens=args.max_solution_tokens,
        init_scale=args.init_scale,
        dtype=args.dtype,
        device=args.device,
        max_seconds=args.max_seconds,
    )
    config.validate()
    torch.manual_seed(args.seed)
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    result = train_soft_prompt(lm, config, args.out, progress=not args.quiet)
    print(
        f"held-out loss {result.initial_val_loss:.4f} (RSP init) -> {result.best_val_loss:.4f} at step "
        f"{result.best_step} of {result.steps_run}{STOP_NOTES[result.stop_reason]}, "
        f"{result.seconds:.0f} s"
    )
    print(f"soft prompt: {result.path}  loss curve: {Path(args.out) / 'loss.png'}")
    print(f"use: rsp eval --methods temperature,soft-prompt --method-option soft_prompt={result.path}")
    return 0

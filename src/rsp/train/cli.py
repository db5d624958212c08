"""`rsp train`: RSP-DAPO from flags or a JSON config file (flags override the file)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from rsp.train.config import DAPOConfig, DAPOConfigError


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="RSP-DAPO reinforcement learning (fresh RSP per rollout)",
        description="Train with DAPO; every rollout carries its own Random Soft Prompt "
        "(--rsp-length 0 = plain DAPO). Resumes if --out holds the same run.",
    )
    p.add_argument("--config", type=Path, help="JSON config file (a DAPOConfig or a run's config.json)")
    p.add_argument("--out", type=Path, required=True, help="run directory (created, or resumed)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--save-merged",
        action="store_true",
        help="at the end also write OUT/merged/, a model directory for `rsp eval --model OUT/merged`",
    )
    defaults = DAPOConfig()
    for f in fields(DAPOConfig):
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            p.add_argument(
                _flag(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"(default {default})",
            )
        elif isinstance(default, dict):
            p.add_argument(
                _flag(f.name),
                dest=f.name,
                default=None,
                type=_json_object,
                help="JSON object of TRL GRPOConfig fields for --trainer trl, applied on top of the "
                'mapping, e.g. \'{"bf16": true, "gradient_accumulation_steps": 2, '
                '"report_to": ["tensorboard"]}\'',
            )
        elif isinstance(default, list):
            p.add_argument(
                _flag(f.name),
                dest=f.name,
                default=None,
                type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                help=f"comma-separated (default {','.join(default)})",
            )
        else:
            p.add_argument(
                _flag(f.name), dest=f.name, type=type(default), default=None, help=f"(default {default})"
            )
    p.set_defaults(func=run_train)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def config_from_args(args: argparse.Namespace) -> DAPOConfig:
    base = DAPOConfig.load(args.config).to_dict() if args.config else DAPOConfig().to_dict()
    for f in fields(DAPOConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            base[f.name] = value
    return DAPOConfig.from_dict(base)


def run_train(args: argparse.Namespace) -> int:
    from rsp.runio import RunDirError
    from rsp.train.run import train

    try:
        cfg = config_from_args(args)
        records = train(cfg, args.out, progress=not args.no_progress, save_merged=args.save_merged)
    except (DAPOConfigError, RunDirError) as exc:
        print(f"rsp train: error: {exc}", file=sys.stderr)
        return 2
    if records:
        last = records[-1]
        print(
            f"step {last['step']}: reward {last.get('reward_mean', float('nan')):.3f}, "
            f"accuracy {last.get('accuracy', float('nan')):.3f}; "
            f"metrics in {args.out / 'metrics.jsonl'}, curves in {args.out / 'curves.png'}"
        )
    return 0

"""`rsp train`: RSP-DAPO from flags and/or a config file (YAML or JSON, or a run directory's config.json;
flags override the file). The flags are the fields of `DAPOConfig` plus `OutputOptions` and
`TrainOptions`, parsed by `rsp.config.RSPArgumentParser`."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsp.config import OutputOptions, RSPArgumentParser, option
from rsp.train.config import DAPOConfig
from rsp.train.run import train


@dataclasses.dataclass
class TrainOptions:
    """What `rsp train` writes besides the run itself; not part of the run's settings (not saved)."""

    save_merged: bool = option(
        False, "at the end also write OUT/merged/, a model directory for `rsp eval --model OUT/merged`"
    )


def _mapping(text: str) -> dict:
    """A JSON object (`{"bf16": true}`) or one KEY=VALUE (the value read as JSON when it parses)."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"not a JSON object: {exc}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("expected a JSON object")
        return value
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected a JSON object or KEY=VALUE, got {text!r}")
    try:
        return {key: json.loads(raw)}
    except json.JSONDecodeError:
        return {key: raw}


class _MergeMapping(argparse.Action):
    """Each use merges its mapping into the field's value (the config file's, or an earlier flag's)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, {**(getattr(namespace, self.dest, None) or {}), **values})


class TrainArgumentParser(RSPArgumentParser):
    """`RSPArgumentParser` with `--trl-args` taking a JSON object (as it always has) as well as KEY=VALUE."""

    def _add_field(self, group: Any, f: dataclasses.Field, hint: Any) -> None:
        if f.name != "trl_args":
            super()._add_field(group, f, hint)
            return
        group.add_argument(
            "--trl-args",
            dest="trl_args",
            type=_mapping,
            action=_MergeMapping,
            default={},
            metavar="JSON|KEY=VALUE",
            help=f.metadata.get("help", "") + " (repeatable; merged)",
        )


def build_parser() -> TrainArgumentParser:
    parser = TrainArgumentParser(
        [DAPOConfig, OutputOptions, TrainOptions],
        prog="rsp train",
        description="Train with DAPO; every rollout carries its own Random Soft Prompt "
        "(--rsp-length 0 = plain DAPO). Resumes if --out holds the same run "
        "(--config OUT/config.json repeats its settings). "
        "See docs/training.md.",
    )
    return parser


def parse(argv: Sequence[str]) -> tuple[DAPOConfig, OutputOptions, TrainOptions]:
    cfg, output, options = build_parser().parse(argv)
    return cfg.validate(), output, options


def main(argv: Sequence[str]) -> int:
    cfg, output, options = parse(argv)
    out = Path(output.out)
    records = train(cfg, out, progress=not output.quiet, save_merged=options.save_merged)
    if records:
        last = records[-1]
        print(
            f"step {last['step']}: reward {last.get('reward_mean', float('nan')):.3f}, "
            f"accuracy {last.get('accuracy', float('nan')):.3f}; "
            f"metrics in {out / 'metrics.jsonl'}, curves in {out / 'curves.png'}"
        )
    return 0

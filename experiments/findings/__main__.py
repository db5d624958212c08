"""`python -m experiments.findings commands | run | select-gsm8k | replicate | report`: the map of issue #16.

Why a module entry point and not an `rsp` subcommand: it drives one experiment of this repository (its
cells, its runs/ folder, its docs page), not a tool for users' own models. Its flags come from the config
dataclasses below through `rsp.config.RSPArgumentParser`, like every `rsp` command's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rsp.config import RSPArgumentParser, option


@dataclass
class RunConfig:
    jobs: int = option(2, "steps run at once")
    hours: float | None = option(
        None,
        "start no step whose estimated wall time would run past this many hours from now (a step of a "
        "model with no measured rate yet has no estimate and starts)",
    )


@dataclass
class SelectConfig:
    screen: str = option(help="the directory of the model's GSM8K screen-shard records (in the ledger)")
    out: str = option(help="where gsm8k_test.jsonl and the few-shot examples go")
    limit: int = option(help="number of problems to keep")
    record: str | None = option(
        None, "the committed selection record: read when it exists (no screen needed), else written"
    )


@dataclass
class ReportConfig:
    root: str | None = option(None, "runs root (default: runs/findings)")
    out: str = option("docs/findings", "where the summaries and plots go")
    doc: str = option("docs/findings.md", "the page whose generated sections are rewritten")


@dataclass
class ReplicateConfig:
    run: str = option(help="the run or shard to rerun, as its directory under runs/findings")
    root: str = option("runs/findings/replicate", "where the rerun goes (resumable)")
    docs: str = option("docs/findings/replication", "where the comparison goes")


def _commands(argv: Sequence[str]) -> int:
    from experiments.findings.cells import steps

    RSPArgumentParser([], prog="python -m experiments.findings commands").parse(argv)
    try:
        for step in steps():
            print(step.command)
    except BrokenPipeError:  # `... --print | head`
        pass
    return 0


def _run(argv: Sequence[str]) -> int:
    from experiments.findings.runner import run_all

    (cfg,) = RSPArgumentParser([RunConfig], prog="python -m experiments.findings run").parse(argv)
    if cfg.hours is not None and cfg.hours <= 0:
        print("run: --hours must be positive", file=sys.stderr)
        return 2
    return 1 if run_all(cfg.jobs, cfg.hours) else 0


def _select(argv: Sequence[str]) -> int:
    from pathlib import Path

    from experiments.findings.select import SelectionError, select_gsm8k

    (cfg,) = RSPArgumentParser([SelectConfig], prog="python -m experiments.findings select-gsm8k").parse(argv)
    try:
        record = Path(cfg.record) if cfg.record else None
        ids = select_gsm8k(Path(cfg.screen), Path(cfg.out), cfg.limit, record)
    except SelectionError as exc:
        print(f"select-gsm8k: {exc}", file=sys.stderr)
        return 1
    print(f"selected {len(ids)} problems: {', '.join(ids)}")
    return 0


def _report(argv: Sequence[str]) -> int:
    from pathlib import Path

    from experiments.findings.report import build_report

    (cfg,) = RSPArgumentParser([ReportConfig], prog="python -m experiments.findings report").parse(argv)
    build_report(root=Path(cfg.root) if cfg.root else None, out=Path(cfg.out), doc=Path(cfg.doc))
    return 0


def _replicate(argv: Sequence[str]) -> int:
    from pathlib import Path

    from experiments.findings.replicate import ReplicationError, replicate

    (cfg,) = RSPArgumentParser([ReplicateConfig], prog="python -m experiments.findings replicate").parse(argv)
    try:
        out, agreement = replicate(cfg.run, root=Path(cfg.root), docs=Path(cfg.docs))
    except ReplicationError as exc:
        print(f"replicate: {exc}", file=sys.stderr)
        return 1
    a = agreement
    print(
        f"{cfg.run}: same answer {a.same_answer}/{a.attempts}, same grade {a.same_grade}/{a.attempts}, "
        f"same correct count {a.problems_same_count}/{a.problems} problems (largest change "
        f"{a.max_count_change}), same mean length {a.problems_same_tokens}/{a.problems}; "
        f"banked {a.banked}, rerun {a.rerun}; written to {out}"
    )
    return 0


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "commands": (_commands, "print every step's command line, in run order"),
    "run": (_run, "run every step (resumable); prefer experiments/findings.sh"),
    "select-gsm8k": (_select, "choose a model's GSM8K problems from its screening run"),
    "replicate": (_replicate, "rerun one banked run on this machine and compare it attempt by attempt"),
    "report": (_report, "bank finished runs; rebuild docs/findings/ and docs/findings.md"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        lines = [f"  {name:13s} {help_}" for name, (_, help_) in COMMANDS.items()]
        usage = "usage: python -m experiments.findings <command> [flags]\n\n"
        print(usage + "\n".join(lines), file=sys.stderr)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    return COMMANDS[args[0]][0](args[1:])


if __name__ == "__main__":
    sys.exit(main())

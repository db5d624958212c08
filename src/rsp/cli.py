"""Command line: `rsp <command> [flags]`, one entry per command in `COMMANDS`.

Every command's flags come from its config dataclasses through `rsp.config.RSPArgumentParser` (so every
command takes `--config FILE.yaml`, flag overrides and `--print-config`); this module only dispatches,
and holds the commands that work on finished runs (`eval`, `report`, `compare`, `methods`). A command is
`module:function(argv) -> exit status`, imported only when it runs, so `rsp --help` needs no optional
extra and an error in one command's dependencies cannot break the others. Bad input raises a ValueError
(or a subclass) whose message names the setting; it is printed as `rsp <command>: error: ...`, exit 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rsp.config import OutputOptions, RSPArgumentParser, option


@dataclasses.dataclass(frozen=True)
class Command:
    target: str  # "module:function", called with the command's arguments
    help: str


COMMANDS: dict[str, Command] = {
    "eval": Command("rsp.cli:eval_main", "sample N attempts per problem for each method and grade them"),
    "report": Command("rsp.cli:report_main", "rebuild summary.md / summary.json / passk.png of an eval run"),
    "compare": Command("rsp.cli:compare_main", "paired table of methods from different eval runs"),
    "methods": Command("rsp.cli:methods_main", "list the methods (what each attempt gets injected)"),
    "analyze": Command(
        "rsp.analysis.cli:main", "mechanism metrics: entropy/KL by position, attention mass, branching"
    ),
    "sweep": Command(
        "rsp.baselines.cli:sweep_main", "grid over method x L x scale x temperature on the same problems"
    ),
    "train-soft-prompt": Command(
        "rsp.baselines.cli:train_soft_prompt_main", "train L soft-prompt vectors with the model frozen"
    ),
    "train": Command("rsp.train.cli:main", "RSP-DAPO reinforcement learning (fresh RSP per rollout)"),
    "serve": Command(
        "rsp.server.cli:main", "OpenAI-compatible server: each of n samples carries its own RSP"
    ),
    "lm-eval": Command(
        "rsp.integrations.lm_eval_cli:run_cli",
        "EleutherAI lm-evaluation-harness with the rsp-hf / rsp-vllm models and rsp_* tasks "
        "(takes lm-eval's own arguments)",
    ),
}


# ---- rsp eval ------------------------------------------------------------------------------------------


def eval_parser() -> RSPArgumentParser:
    from rsp.evaluation import EvalConfig

    return RSPArgumentParser(
        [EvalConfig, OutputOptions],
        prog="rsp eval",
        description="Sample N attempts per problem for each method, grade them, and write samples.jsonl, "
        "summary.md and passk.png to --out (rerunning the same command resumes).",
    )


def eval_main(argv: Sequence[str]) -> int:
    from rsp.evaluation import run_eval
    from rsp.reporting import markdown_table, write_eval_report

    cfg, output = eval_parser().parse(argv)
    out = Path(output.out)
    run = run_eval(cfg, out, progress=not output.quiet)
    summary = write_eval_report(out, run.records, cfg.to_dict(), seconds=run.seconds)
    print(markdown_table(summary))
    print(
        f"samples: {out / 'samples.jsonl'}  report: {out / 'summary.md'}  "
        f"plot: {out / 'passk.png'}  ({run.seconds:.0f} s this session)"
    )
    for event in run.oom_events:
        print(f"note: {event}")
    return 0


# ---- rsp report ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class ReportConfig:
    run: str = option(help="an `rsp eval` run directory")


def report_parser() -> RSPArgumentParser:
    return RSPArgumentParser([ReportConfig], prog="rsp report", description=COMMANDS["report"].help)


def report_main(argv: Sequence[str]) -> int:
    from rsp.reporting import markdown_table, report_run

    (cfg,) = report_parser().parse(argv)
    print(markdown_table(report_run(Path(cfg.run))))
    return 0


# ---- rsp compare ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class CompareConfig:
    arm: list[str] = option(
        help="LABEL=RUN_DIR:METHOD; the first arm is the baseline of the paired differences",
        metavar="LABEL=RUN_DIR:METHOD",
        comma=False,
    )
    out: str | None = option(None, "also write summary.md / summary.json / passk.png here")


def compare_parser() -> RSPArgumentParser:
    return RSPArgumentParser(
        [CompareConfig],
        prog="rsp compare",
        description="Paired table of methods from different eval runs (e.g. before and after training).",
    )


def compare_main(argv: Sequence[str]) -> int:
    from rsp.reporting import compare_runs, markdown_table, parse_arm, plot_passk
    from rsp.runio import atomic_write_text

    (cfg,) = compare_parser().parse(argv)
    summary = compare_runs([parse_arm(a) for a in cfg.arm])
    table = markdown_table(summary)
    print(table)
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        arms = "\n".join(f"- `{a['label']}`: method `{a['method']}` of `{a['run']}`" for a in summary["arms"])
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        atomic_write_text(out / "summary.md", f"# Comparison\n\n{arms}\n\n{table}\n![pass@k](passk.png)\n")
        if summary.get("problems"):
            title = "comparison: " + ", ".join(a["label"] for a in summary["arms"])
            plot_passk(summary, out / "passk.png", title)
    return 0


# ---- rsp methods ---------------------------------------------------------------------------------------


def methods_main(argv: Sequence[str]) -> int:
    from rsp.methods import method_descriptions

    RSPArgumentParser([], prog="rsp methods", description=COMMANDS["methods"].help).parse(argv)
    for name, desc in sorted(method_descriptions().items()):
        print(f"{name:14s} {desc}")
    return 0


# ---- dispatch ------------------------------------------------------------------------------------------


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: rsp [-v] <command> [flags]   (rsp <command> --help for its flags)",
        "",
        "Random Soft Prompts: inject, sample, grade, analyse, train.",
        "",
        "commands:",
        *(f"  {name:{width}s}  {cmd.help}" for name, cmd in COMMANDS.items()),
        "",
        "Every command but lm-eval also takes --config FILE.yaml (flags override it) and --print-config.",
        "  -v, --verbose  log more detail",
    ]
    return "\n".join(lines)


def resolve(name: str) -> Callable[[list[str]], int]:
    """The function that runs command `name`."""
    module, _, function = COMMANDS[name].target.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = False
    while args and args[0] in ("-v", "--verbose"):
        verbose, args = True, args[1:]
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"rsp: error: unknown command {name!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    run = resolve(name)
    from rsp.models.packaged import PackagedModelMissing

    if name == "lm-eval":  # lm-eval's own parser and error handling, but the missing-weights hint is ours
        try:
            return int(run(rest) or 0)
        except PackagedModelMissing as exc:
            print(f"rsp {name}: error: {exc}", file=sys.stderr)
            return 2
    from rsp.models.loading import ModelLoadError
    from rsp.runio import RunDirError
    from rsp.tasks.base import TaskError

    try:
        return int(run(rest) or 0)
    except (TaskError, ModelLoadError, RunDirError, FileNotFoundError, ValueError) as exc:
        print(f"rsp {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"rsp {name}: interrupted; finished records are saved, rerun the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`rsp eval`, `rsp report`, `rsp compare` and `rsp methods`.

`rsp.evaluation` and `rsp.methods` are imported inside the commands that use them: `rsp report` and
`rsp compare` read JSONL records and need neither (torch alone is 3 s of a cold start).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from rsp.cli import COMMANDS
from rsp.config import OutputOptions, RSPArgumentParser, option
from rsp.reporting import (
    compare_runs,
    markdown_table,
    parse_arm,
    report_run,
    write_eval_report,
    write_summary,
)


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

    cfg, output = eval_parser().parse(argv)
    out = Path(output.out)
    run = run_eval(cfg, out, progress=not output.quiet)
    summary = write_eval_report(out, run.records, run.config.to_dict(), seconds=run.seconds)
    print(markdown_table(summary))
    files = f"samples: {out / 'samples.jsonl'}  report: {out / 'summary.md'}  plot: {out / 'passk.png'}"
    print(f"{files}  ({run.seconds:.0f} s this session)")
    for event in run.oom_events:
        print(f"note: {event}")
    return 0


@dataclasses.dataclass
class ReportConfig:
    run: str = option(help="an `rsp eval` run directory")


def report_parser() -> RSPArgumentParser:
    return RSPArgumentParser([ReportConfig], prog="rsp report", description=COMMANDS["report"].help)


def report_main(argv: Sequence[str]) -> int:
    (cfg,) = report_parser().parse(argv)
    print(markdown_table(report_run(Path(cfg.run))))
    return 0


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
    (cfg,) = compare_parser().parse(argv)
    summary = compare_runs([parse_arm(a) for a in cfg.arm])
    print(markdown_table(summary))
    if cfg.out:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        arms = "\n".join(f"- `{a['label']}`: method `{a['method']}` of `{a['run']}`" for a in summary["arms"])
        title = "comparison: " + ", ".join(a["label"] for a in summary["arms"])
        write_summary(Path(cfg.out), summary, title, f"# Comparison\n\n{arms}\n\n")
    return 0


def methods_main(argv: Sequence[str]) -> int:
    from rsp.methods import method_descriptions

    RSPArgumentParser([], prog="rsp methods", description=COMMANDS["methods"].help).parse(argv)
    for name, desc in sorted(method_descriptions().items()):
        print(f"{name:14s} {desc}")
    return 0

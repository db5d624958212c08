"""`rsp analyze`: from a finished eval run (`--run`), or run what it needs itself (`--model/--task ...`,
`rsp eval`'s flags with this command's smaller `ANALYZE_DEFAULTS`)."""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Sequence
from pathlib import Path

from rsp.analysis.report import write_report
from rsp.analysis.run import AnalysisOptions, analyse_run, write_metrics
from rsp.config import RSPArgumentParser, option, require_min
from rsp.evaluation import EvalConfig, run_eval

# live mode: fewer problems and attempts than `rsp eval`, and the fixed-RSP control beside RSP
ANALYZE_DEFAULTS = {"n": 8, "methods": ("temperature", "rsp", "rsp-fixed"), "limit": 12}


@dataclasses.dataclass
class AnalyzeConfig:
    """What `rsp analyze` reads, writes and measures (the eval settings of live mode are `EvalConfig`)."""

    _argument_group_name = "analysis"  # the --help group of every field
    run: str | None = option(None, "an `rsp eval` run directory to analyse (no regeneration needed)")
    out: str | None = option(
        None, "where to write metrics and the report (default with --run: RUN/analysis; live mode needs it)"
    )
    k: int = option(32, "generated positions to analyse")
    analysis_batch_size: int = option(16, "rows per forward pass of the analysis")
    max_problems: int | None = option(None, "analyse at most this many problems (default: all)")
    attention: bool = option(True, "measure the attention mass on the injected vectors")
    quiet: bool = option(False, "no progress bars")

    def validate(self) -> AnalyzeConfig:
        require_min(self, 1, "k", "analysis_batch_size", "max_problems")
        if self.run is None and not self.out:
            raise ValueError("live mode (no --run) needs --out")
        return self

    def output_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        assert self.run is not None
        return Path(self.run) / "analysis"


def build_parser() -> RSPArgumentParser:
    return RSPArgumentParser(
        [AnalyzeConfig, EvalConfig],
        defaults=ANALYZE_DEFAULTS,
        prog="rsp analyze",
        description="Mechanism metrics (entropy and KL by position, attention mass, branching) of an "
        "eval run (--run), or of a small live run with the eval settings below (--out).",
    )


def parse(argv: Sequence[str]) -> tuple[AnalyzeConfig, EvalConfig]:
    analyze, evaluation = build_parser().parse(argv)
    analyze.validate()
    if analyze.run is None:
        evaluation.validate()
    return analyze, evaluation


def main(argv: Sequence[str]) -> int:
    cfg, eval_cfg = parse(argv)
    out = cfg.output_dir()
    if cfg.run is not None:
        run_dir = Path(cfg.run)  # analyse_run reads it first: RunDirError "RUN is not an rsp eval run (...)"
    else:
        run_dir = out / "eval"
        run_eval(eval_cfg, run_dir, progress=not cfg.quiet)
    options = AnalysisOptions(cfg.k, cfg.analysis_batch_size, cfg.max_problems, cfg.attention)
    result = analyse_run(run_dir, options=options, progress=not cfg.quiet)
    write_metrics(result, out)
    report = write_report(result, out, command="rsp analyze " + " ".join(shlex.quote(a) for a in argv))
    print(f"metrics: {out / 'metrics.json'}, {out / 'metrics.csv'}  report: {report}")
    return 0

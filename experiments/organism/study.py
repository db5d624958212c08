"""The paper's questions asked on the organism (docs/organism.md, "The study"): one list of arms.

    python experiments/organism/study.py list                 # every arm's rsp eval command, in run order
    python experiments/organism/study.py run --checkpoint sft # run that checkpoint's arms (resumable)
    python experiments/organism/study.py report               # docs/results/organism/study.{json,md}

Why this shape: each arm is one `rsp eval` of one method with common random numbers on, so every arm at a
temperature decodes with the same random stream as that temperature's plain-sampling baseline, and any two
run directories of the same checkpoint and temperature are paired attempt for attempt (`rsp compare`). The
arms and the verdict rule were written down before any arm ran (the commit that added this file); a user
with another model or checkpoint adds a line to `CHECKPOINTS` and runs the same arms with the same command
(`--engine vllm` on a GPU through `RSP_STUDY_ENGINE`).

Verdict rule, per (checkpoint, arm): the paired difference arm - baseline of per-problem pass@k (k = 1, 8,
32; 95 % percentile bootstrap over the 64 problems, rsp's `bootstrap_ci`) is "helps" when its interval lies
above 0, "hurts" when below, "no resolved effect" otherwise. The claim C2 (RSP widens pass@N) is read at
k = 32, T > 0, L = 4; a greedy arm's baseline is the one greedy attempt per problem, counted N times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = "runs/organism/study"  # relative to ROOT, where rsp eval runs
RESULTS = ROOT / "docs/results/organism"

# checkpoint key -> model folder (relative to ROOT). sft: the organism (SFT step 40); rl: the end of the
# planned 40-step plain DAPO run from it, the most trained checkpoint (chosen before it was measured).
CHECKPOINTS = {
    "sft": "runs/organism/sft/step_0040",
    "rl": "runs/organism/dapo/hf_step_0040",
}
PROBLEMS = 64
ATTEMPTS = 32
TASK = ["--task", "arith", "--split", "test", "--arith-steps", "2", "--arith-max-value", "20"]


@dataclass(frozen=True)
class Arm:
    method: str  # temperature (the baseline), rsp, or a control
    temperature: float
    length: int = 4  # RSP length L (recorded for the baseline too: rsp eval's default)
    crn: bool = True  # False: the arm decodes with its own random stream (the method name is a seed key)

    @property
    def greedy_baseline(self) -> bool:
        return self.method == "temperature" and self.temperature == 0.0

    @property
    def name(self) -> str:
        tail = "" if self.method == "temperature" else f"-L{self.length}"
        return f"t{self.temperature}-{self.method}{tail}" + ("" if self.crn else "-indep")

    def baseline(self) -> Arm:
        return Arm("temperature", self.temperature)


# Run order: the base pair first (it carries C2), then temperature, then length, then the controls, then
# greedy. Fixed before any arm ran.
ARMS = (
    Arm("temperature", 0.7),
    Arm("rsp", 0.7),
    Arm("temperature", 0.3),
    Arm("rsp", 0.3),
    Arm("temperature", 1.0),
    Arm("rsp", 1.0),
    Arm("rsp", 0.7, 1),
    Arm("rsp", 0.7, 16),
    Arm("rsp-shared", 0.7),
    Arm("token-string", 0.7),
    Arm("temperature", 0.0),
    Arm("rsp", 0.0),
    # Added after the arms above had started (no verdict reads it): the base RSP arm again with its own
    # random stream, to measure how much common random numbers narrow the paired interval (same problems,
    # same attempts, same injection; only the decode stream's pairing differs).
    Arm("rsp", 0.7, crn=False),
)


def out_dir(checkpoint: str, arm: Arm) -> str:
    return f"{OUT}/{checkpoint}/{arm.name}"


def argv(checkpoint: str, arm: Arm) -> list[str]:
    n = 1 if arm.greedy_baseline else ATTEMPTS  # greedy without injection: every attempt is the same
    engine = os.environ.get("RSP_STUDY_ENGINE", "prefix")
    return [
        "rsp", "eval", "--model", CHECKPOINTS[checkpoint], *TASK, "--limit", str(PROBLEMS), "--n", str(n),
        "--methods", arm.method, "--rsp-length", str(arm.length), "--temperature", str(arm.temperature),
        "--max-new-tokens", "128", "--batch-size", "32", "--engine", engine, "--dtype", "float32",
        "--seed", "0", "--common-random-numbers" if arm.crn else "--no-common-random-numbers", "--quiet",
        "--out", out_dir(checkpoint, arm),
    ]  # fmt: skip


def cmd_list(args: argparse.Namespace) -> None:
    for ckpt in args.checkpoint or CHECKPOINTS:
        for arm in ARMS:
            if not args.arm or arm.name in args.arm:
                print(" ".join(argv(ckpt, arm)))


def cmd_run(args: argparse.Namespace) -> None:
    exe = Path(sys.executable).with_name("rsp")
    for ckpt in args.checkpoint or CHECKPOINTS:
        if not (ROOT / CHECKPOINTS[ckpt]).is_dir():
            raise SystemExit(f"{CHECKPOINTS[ckpt]} does not exist: build it first (docs/organism.md)")
        for arm in ARMS:
            if args.arm and arm.name not in args.arm:
                continue
            cmd = argv(ckpt, arm)
            print(" ".join(cmd), flush=True)
            subprocess.run([str(exe), *cmd[1:]], check=True, cwd=ROOT, env=os.environ.copy())


def _per_problem(run_dir: Path, method: str) -> dict[str, list[bool]]:
    rows: dict[str, list[bool]] = {}
    for line in (run_dir / "samples.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r["method"] == method:
                rows.setdefault(r["problem_id"], []).append(bool(r["correct"]))
    return rows


def compare(checkpoint: str, arm: Arm) -> dict | None:
    """The arm against its baseline, paired by problem; None until both runs are complete."""
    from rsp.metrics import bootstrap_ci, pass_at_k

    runs = {}
    for one in (arm.baseline(), arm):
        d = ROOT / out_dir(checkpoint, one)
        rows = _per_problem(d, one.method) if (d / "samples.jsonl").is_file() else {}
        want = 1 if one.greedy_baseline else ATTEMPTS
        if len(rows) < PROBLEMS or any(len(v) < want for v in rows.values()):
            return None
        if one.greedy_baseline:  # counted N times
            rows = {p: v * ATTEMPTS for p, v in rows.items()}
        runs[one.name] = rows
    base, arm_rows = runs[arm.baseline().name], runs[arm.name]
    ids = sorted(base)
    out: dict = {"checkpoint": checkpoint, "arm": arm.name, "baseline": arm.baseline().name}
    for k in (1, 8, 32):
        b = [pass_at_k(len(base[p]), sum(base[p]), k) for p in ids]
        a = [pass_at_k(len(arm_rows[p]), sum(arm_rows[p]), k) for p in ids]
        diff = bootstrap_ci([x - y for x, y in zip(a, b, strict=True)])
        verdict = "helps" if diff.low > 0 else "hurts" if diff.high < 0 else "no resolved effect"
        out[f"pass@{k}"] = {
            "baseline": sum(b) / len(b),
            "arm": sum(a) / len(a),
            "difference": diff.to_dict(),
            "verdict": verdict,
        }
    return out


def crn_widths(results: list[dict]) -> list[str]:
    rows = []
    by = {(r["checkpoint"], r["arm"]): r for r in results}
    paired, own = Arm("rsp", 0.7), Arm("rsp", 0.7, crn=False)
    for ckpt in CHECKPOINTS:
        a, b = by.get((ckpt, paired.name)), by.get((ckpt, own.name))
        if a and b:
            for k in (1, 8, 32):
                da, db = a[f"pass@{k}"]["difference"], b[f"pass@{k}"]["difference"]
                wa, wb = da["ci_high"] - da["ci_low"], db["ci_high"] - db["ci_low"]
                rows.append(f"| {ckpt} | {k} | {wa:.3f} | {wb:.3f} | {wa / wb:.2f} |" if wb else "")
    return [r for r in rows if r]


def cmd_report(args: argparse.Namespace) -> None:
    pairs = [(ckpt, arm) for ckpt in CHECKPOINTS for arm in ARMS if arm.method != "temperature"]
    results = [c for ckpt, arm in pairs if (c := compare(ckpt, arm))]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "study.json").write_text(json.dumps(results, indent=2) + "\n")
    md = [
        "# The organism study: each arm against plain sampling at its temperature",
        "",
        "`python experiments/organism/study.py report` (arms and verdicts: study.py).",
        f"{PROBLEMS} held-out 2-step problems x {ATTEMPTS} attempts, fp32, common random numbers;",
        "difference = arm - baseline of per-problem pass@k, 95 % bootstrap interval over problems.",
        "",
        "| checkpoint | arm | baseline | pass@1 base -> arm | diff pass@1 | diff pass@8 "
        "| pass@32 base -> arm | diff pass@32 | verdicts k=1 / 8 / 32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p1, p8, p32 = r["pass@1"], r["pass@8"], r["pass@32"]

        def ci(e: dict) -> str:
            return f"{e['mean']:+.3f} [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}]"

        md.append(
            f"| {r['checkpoint']} | {r['arm']} | {r['baseline']} | {p1['baseline']:.3f} -> {p1['arm']:.3f} "
            f"| {ci(p1['difference'])} | {ci(p8['difference'])} | {p32['baseline']:.3f} -> {p32['arm']:.3f} "
            f"| {ci(p32['difference'])} | {p1['verdict']} / {p8['verdict']} / {p32['verdict']} |"
        )
    md += ["", f"{len(results)} of {len(pairs)} comparisons complete.", ""]
    widths = crn_widths(results)
    if widths:
        md += [
            "## Common random numbers: paired interval width",
            "",
            "The same RSP arm (L=4, T=0.7) against the same plain-sampling arm, once decoding with the",
            "baseline's random stream (common random numbers) and once with its own; width = upper - lower",
            "bound of the 95 % interval of the paired difference.",
            "",
            "| checkpoint | k | width, common stream | width, own stream | ratio |",
            "|---|---|---|---|---|",
            *widths,
            "",
        ]
    (RESULTS / "study.md").write_text("\n".join(md))
    print("\n".join(md))


def main(argv_: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("list", "run"):
        s = sub.add_parser(name)
        s.add_argument("--checkpoint", action="append", choices=sorted(CHECKPOINTS))
        s.add_argument("--arm", action="append", choices=[a.name for a in ARMS], help="only these arms")
    sub.add_parser("report")
    args = p.parse_args(argv_)
    {"list": cmd_list, "run": cmd_run, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()

"""Rebuild the organism's checkpoints and measurements, one subcommand each (see docs/organism.md).

    python experiments/organism/build.py sft --stop-after 40   # runs/organism/sft/step_0020, step_0040
    python experiments/organism/build.py eval --model runs/organism/sft/step_0040 --name sft-step40
    python experiments/organism/build.py dapo --steps 40       # rsp train, plain DAPO (--rsp-length 0)
    python experiments/organism/build.py export-dapo           # DAPO checkpoints -> HF folders

Every subcommand resumes: rerunning it continues where a kill left it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs/results/organism"
SFT_DIR = ROOT / "runs/organism/sft"
DAPO_DIR = ROOT / "runs/organism/dapo"


def cmd_eval(args: argparse.Namespace) -> None:
    from organism_eval import (
        MD_HEADER,
        EvalSpec,
        first_token_entropy,
        markdown_row,
        read_samples,
        run_rsp_eval,
        summarise,
    )

    RESULTS.mkdir(parents=True, exist_ok=True)
    rows, results = [], []
    model = os.path.relpath(Path(args.model).resolve(), ROOT)  # rsp eval runs in ROOT
    for steps in args.arith_steps:
        spec = EvalSpec(arith_steps=steps, limit=args.limit, n=args.n, temperature=args.temperature)
        out = Path("runs/organism/eval") / args.name / spec.tag()  # relative to ROOT, where rsp eval runs
        t0, c0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        argv = run_rsp_eval(model, spec, out)
        seconds, c1 = time.time() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
        metrics = summarise(read_samples(ROOT / out / "samples.jsonl"), max_new_tokens=spec.max_new_tokens)
        metrics["first_token_entropy"] = first_token_entropy(str(ROOT / model), spec)
        results.append(
            {
                "name": args.name,
                "model": model,
                "spec": asdict(spec),
                "command": " ".join(argv),
                "eval_wall_seconds": round(seconds, 1),
                "eval_cpu_seconds": round(cpu, 1),  # 0 when the run was already complete (resumed)
                "metrics": metrics,
            }
        )
        rows.append(markdown_row(args.name, spec, metrics))
        print(rows[-1], flush=True)
    (RESULTS / f"eval-{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    md = [f"# {args.name}", "", f"`python experiments/organism/build.py {' '.join(sys.argv[1:])}`", ""]
    md += [MD_HEADER, *rows, ""]
    md += ["rsp eval commands:", "", *[f"    {r['command']}" for r in results], ""]
    (RESULTS / f"eval-{args.name}.md").write_text("\n".join(md))


DAPO_ARGS = {
    "--task": "arith",
    "--arith-steps": "2",
    "--arith-max-value": "20",
    "--train-problems": "512",
    "--rsp-length": "0",  # plain DAPO: nothing injected, the same code path as RSP-DAPO
    "--group-size": "8",
    "--prompts-per-step": "4",
    "--lr": "1e-4",  # LoRA (r 16, alpha 32)
    "--max-new-tokens": "96",
    "--temperature": "1.0",
    "--checkpoint-every": "5",  # each kept as an HF folder by `dapo` while it runs (the run keeps 2 .pt)
    "--seed": "0",
}


def dapo_argv(model: Path, steps: int, out: Path) -> list[str]:
    # LoRA (rsp train's default): `--no-lora` leaves no trainable parameter in this rsp version (load_model
    # freezes the model and the full fine-tuning path does not unfreeze it), see docs/organism.md
    argv = ["rsp", "train", "--model", str(model), "--steps", str(steps), "--quiet"]
    for k, v in DAPO_ARGS.items():
        argv += [k, v]
    return [*argv, "--out", str(out)]


def cmd_dapo(args: argparse.Namespace) -> None:
    """rsp train, with every checkpoint turned into an HF folder while it runs: the run keeps only its
    newest two .pt files, and the narrowing curve needs each one."""
    argv = dapo_argv(args.model, args.steps, args.out)
    print(" ".join(argv), flush=True)
    exe = Path(sys.executable).with_name("rsp")
    proc = subprocess.Popen([str(exe), *argv[1:]], env=os.environ.copy())
    while proc.poll() is None:
        time.sleep(20)
        if (args.out / "config.json").exists():
            cmd_export_dapo(args)
    if proc.returncode:
        raise SystemExit(proc.returncode)
    cmd_export_dapo(args)


def cmd_export_dapo(args: argparse.Namespace) -> None:
    """Turn each `rsp train` checkpoint into an HF folder `rsp eval --model` loads: the SFT model with the
    run's LoRA adapters (the checkpoint's trainable parameters, by name) merged in."""
    import torch
    from organism_sft import save_hf
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run_cfg = json.loads((args.out / "config.json").read_text())
    run_cfg = run_cfg.get("config", run_cfg)
    for ck in sorted((args.out / "checkpoints").glob("step_*.pt")):
        step = int(ck.stem.split("_")[1])
        target = args.out / f"hf_step_{step:04d}"
        if target.exists():
            continue
        state = torch.load(ck, map_location="cpu", weights_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32)
        lora = LoraConfig(
            r=run_cfg["lora_r"],
            lora_alpha=run_cfg["lora_alpha"],
            lora_dropout=run_cfg["lora_dropout"],
            target_modules=list(run_cfg["lora_target_modules"]),
            bias="none",
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(
            model, lora
        )  # injects the adapters into `model` in place, as rsp train does
        params = dict(model.named_parameters())
        missing = set(state["trainable"]) - set(params)
        if missing:
            raise SystemExit(f"{ck}: parameters not in the model: {sorted(missing)[:3]}")
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value)
        save_hf(peft_model.merge_and_unload(), str(args.model), target)
        print(f"wrote {target}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sft", help="supervised fine-tuning from the packaged SmolLM2-135M-Instruct")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences a step (default: the recipe's)")
    p.add_argument("--train-layers", type=int, default=None, help="top decoder layers trained (30: all)")
    p.add_argument("--lr", type=float, default=None, help="learning rate after warm-up")
    p.add_argument("--save-every", type=int, default=None, help="steps between saved HF folders")
    p.add_argument(
        "--stop-after", type=int, default=None, help="end after this step (checkpoints as the full run's)"
    )
    p.add_argument("--out", type=Path, default=SFT_DIR)
    p = sub.add_parser("eval", help="rsp eval on held-out test problems, then the summary in docs/results")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--arith-steps", type=int, nargs="+", default=[2, 3])
    p.add_argument("--limit", type=int, default=32)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--temperature", type=float, default=0.7)
    p = sub.add_parser("dapo", help="plain DAPO (rsp train --rsp-length 0) from the SFT checkpoint")
    p.add_argument("--model", type=Path, default=SFT_DIR / "step_0040")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=DAPO_DIR)
    p = sub.add_parser("export-dapo", help="HF folders from the DAPO run's checkpoints")
    p.add_argument("--model", type=Path, default=SFT_DIR / "step_0040")
    p.add_argument("--out", type=Path, default=DAPO_DIR)
    args = ap.parse_args(argv)
    if args.cmd == "sft":
        from organism_sft import SFTConfig, run_sft

        keys = ("steps", "batch_size", "train_layers", "lr", "save_every")
        cfg = SFTConfig(**{k: getattr(args, k) for k in keys if getattr(args, k) is not None})
        run_sft(cfg, args.out, stop_after=args.stop_after)
    elif args.cmd == "eval":
        cmd_eval(args)
    elif args.cmd == "dapo":
        cmd_dapo(args)
    else:
        cmd_export_dapo(args)


if __name__ == "__main__":
    main()

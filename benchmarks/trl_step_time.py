"""What an RSP costs per TRL GRPO step: the same script with `RSPConfig(length=0)` and with `length=L`.

Why this comparison: `RSPConfig(length=0)` attaches nothing (plain `GRPOTrainer`, bit for bit), so the
difference is everything the RSP adds: L more prompt positions, the embedding hook in generation and in
every scored chunk, the head ban in TRL's fused log-prob kernel. Completions are forced to full length
(`min_new_tokens`), so both arms decode the same number of tokens. Arms alternate (0, L, 0, L, ...) in
one process; each arm is a fresh trainer on freshly loaded weights; TRL's own `step_time` metric
(generation + scoring + forward/backward of one optimizer step, wall clock) is reported per step, with
the process CPU time of the same step beside it (on a shared machine wall time also measures the other
jobs; with one thread, CPU time is the work done), the first step of each trainer separately (it includes
one-off work).

    OMP_NUM_THREADS=1 python benchmarks/trl_step_time.py --model smollm2-135m-instruct --steps 2 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch


def run_arm(model: str, length: int, args, out_dir: str) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig

    import rsp
    from rsp.integrations.trl import RSPGRPOTrainer
    from rsp.models.loading import converted_path

    rows = [
        {
            "prompt": [{"role": "user", "content": f"What is {i} + {2 * i + 1}? Answer with a number."}],
            "solution": str(3 * i + 1),
        }
        for i in range(64)
    ]

    def reward(completions, solution, **_):  # cheap and non-constant, so every group has an update
        return [float(len(c[0]["content"]) % 3) for c in completions]

    config = GRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=args.rollouts,
        num_generations=args.rollouts,
        max_completion_length=args.tokens,
        max_steps=args.steps,
        use_cpu=True,
        bf16=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-5,
        seed=0,
        generation_kwargs={"min_new_tokens": args.tokens},
        model_init_kwargs={"dtype": "float32"},
        disable_tqdm=True,
    )
    peft = LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    t0 = time.perf_counter()
    trainer = RSPGRPOTrainer(
        model=converted_path(model),
        reward_funcs=reward,
        args=config,
        train_dataset=Dataset.from_list(rows),
        peft_config=peft,
        rsp_config=rsp.RSPConfig(length=length),
    )
    build = time.perf_counter() - t0
    cpu: list[float] = []

    class CpuTime(TrainerCallback):
        def on_step_begin(self, *a, **k):
            cpu.append(-time.process_time())

        def on_step_end(self, *a, **k):
            cpu[-1] += time.process_time()

    trainer.add_callback(CpuTime())
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    steps = [h["step_time"] for h in trainer.state.log_history if "step_time" in h]
    return {
        "length": length,
        "build_s": build,
        "train_wall_s": wall,
        "step_time_s": steps,
        "step_cpu_s": cpu,
        "completion_tokens": [
            h.get("completions/mean_length") for h in trainer.state.log_history if "step_time" in h
        ],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--length", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--rollouts", type=int, default=8, help="rollouts per step (one prompt x this many)")
    p.add_argument("--tokens", type=int, default=64, help="completion length (forced)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for repeat in range(args.repeats):
        for length in (0, args.length):
            with tempfile.TemporaryDirectory() as out:
                r = run_arm(args.model, length, args, out)
            r["repeat"] = repeat
            results.append(r)
            print(json.dumps(r), flush=True)
    for length in (0, args.length):
        for key in ("step_time_s", "step_cpu_s"):
            later = [s for r in results if r["length"] == length for s in r[key][1:]]
            first = [r[key][0] for r in results if r["length"] == length]
            print(
                f"L={length} {key}: first step median {statistics.median(first):.3f} s"
                + (f", later steps median {statistics.median(later):.3f} s (n={len(later)})" if later else "")
            )


if __name__ == "__main__":
    main()

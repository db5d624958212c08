"""Supervised fine-tuning of the organism: a plain, deterministic torch loop.

Why plain torch and not TRL's SFTTrainer: the checkpoint must be rebuilt bit for bit by one command, and a
loop this small has nothing hidden (no dataloader workers, no packing, no shuffling seeded from elsewhere).
Every source of variation is fixed: fp32, `torch.manual_seed`, deterministic algorithms, a fixed thread
count (recorded; CPU reductions depend on it), a data order that is a pure function of the seed, and a
fixed step count. The learning rate is constant after a short warm-up, so the step-N checkpoint of a long
run is the same model as a run of N steps.

The input embedding table is frozen (with SmolLM2's tied embeddings that also freezes the LM head). RSP
draws its vectors from the embedding table's statistics; keeping the table fixed keeps those statistics the
base model's, so RSP on the organism is the same perturbation as RSP on the packaged model.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from organism_data import IGNORE, Example, eval_questions, train_examples


@dataclass(frozen=True)
class SFTConfig:
    base: str = "smollm2-135m-instruct"
    train_arith_steps: tuple[int, ...] = (2, 3)
    max_value: int = 20
    data_seed: int = (
        1  # train split, seed 1: neither `rsp eval --seed 0` (test) nor `rsp train --seed 0` (train)
    )
    exclude_eval_n: int = 1024  # test problems per step count (seed 0, 1-3 steps) ruled out by text
    pool_per_arith_steps: int = 200  # train problems generated per step count (more if the run needs more)
    batch_size: int = 16
    steps: int = 160
    save_every: int = 20
    lr: float = 5e-5
    warmup: int = 3
    train_layers: int = 30  # the top decoder layers (and the final norm) are trained; 30: all of them
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    threads: int = 1  # one thread: on a shared, oversubscribed CPU a second thread mostly waits at barriers


def _batch(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return ids, labels, mask


def freeze_below(model, train_layers: int) -> None:
    """Train only the top `train_layers` decoder layers and the final norm.

    The embedding table stays frozen (see the module docstring); the lower layers are frozen to save CPU:
    autograd then stops at the lowest trained layer, so a step costs about 1 + 2 * train_layers / layers
    forward passes instead of 3.
    """
    model.requires_grad_(False)
    layers = model.model.layers
    for layer in layers[len(layers) - train_layers :]:
        layer.requires_grad_(True)
    model.model.norm.requires_grad_(True)
    model.get_input_embeddings().weight.requires_grad_(False)  # tied to the LM head: stays frozen


def target_loss(
    model, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over the labelled (target) tokens of the whole batch; the LM head runs
    only at the positions that predict a target token (the prompt's logits would be thrown away)."""
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    shift_labels = labels[:, 1:]
    keep = shift_labels != IGNORE
    logits = model.lm_head(hidden[:, :-1][keep])
    loss = torch.nn.functional.cross_entropy(logits, shift_labels[keep], reduction="sum")
    n = int(keep.sum())
    return loss / max(n, 1), n


def run_sft(cfg: SFTConfig, out: Path, stop_after: int | None = None) -> None:
    from transformers import AutoModelForCausalLM

    from rsp.models import resolve_model_dir
    from rsp.models.loading import load_tokenizer

    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    if cfg_path.exists() and json.loads(cfg_path.read_text()) != json.loads(json.dumps(asdict(cfg))):
        raise SystemExit(f"{out} holds a run with other settings; use another directory")
    cfg_path.write_text(json.dumps(asdict(cfg), indent=2) + "\n")

    base_dir, _ = resolve_model_dir(cfg.base)
    tok = load_tokenizer(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    freeze_below(model, cfg.train_layers)
    exclude = eval_questions((1, 2, 3), cfg.exclude_eval_n, cfg.max_value, seed=0)
    # The pool does not depend on `steps` (up to pool_per_arith_steps problems per step count), so runs of
    # different lengths see the same data order and step N of a long run is a run of N steps.
    need_per = -(-cfg.steps * cfg.batch_size // len(cfg.train_arith_steps)) + cfg.batch_size
    per = max(cfg.pool_per_arith_steps, need_per)
    examples = train_examples(tok, cfg.train_arith_steps, per, cfg.max_value, cfg.data_seed, exclude)
    need = cfg.steps * cfg.batch_size
    if len(examples) < need:
        raise SystemExit(f"only {len(examples)} examples for {need} needed")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup))
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else 0)

    state_path = out / "state.pt"
    log_path = out / "train_log.jsonl"
    start = 0
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["rng"])
        start = int(state["step"])
        lines = log_path.read_text().splitlines()[:start] if log_path.exists() else []
        log_path.write_text("".join(line + "\n" for line in lines))
        print(f"resuming at step {start}", flush=True)
    model.train()
    # stop_after ends the run early (its checkpoints are the full run's: same data order, same schedule)
    for step in range(start, cfg.steps if stop_after is None else min(cfg.steps, stop_after)):
        t0 = time.time()
        batch = examples[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        ids, labels, mask = _batch(batch, pad)
        loss, n = target_loss(model, ids, labels, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        rec = {
            "step": step + 1,
            "loss": round(float(loss.detach()), 6),
            "target_tokens": n,
            "grad_norm": round(float(gnorm), 4),
            "lr": opt.param_groups[0]["lr"],
            "seconds": round(time.time() - t0, 2),
        }
        with log_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)
        if (step + 1) % cfg.save_every == 0 or step + 1 in (cfg.steps, stop_after):
            save_hf(model, base_dir, out / f"step_{step + 1:04d}")
            tmp = out / "state.pt.tmp"
            torch.save(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "rng": torch.get_rng_state(),
                    "step": step + 1,
                },
                tmp,
            )
            tmp.replace(state_path)


def save_hf(model, base_dir: str, target: Path) -> None:
    """An HF model folder `rsp eval --model` loads: the weights, plus the base's tokenizer and chat
    template files copied byte for byte (so the prompts are the base model's prompts)."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        src = Path(base_dir) / name
        if src.exists():
            shutil.copyfile(src, tmp / name)
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)

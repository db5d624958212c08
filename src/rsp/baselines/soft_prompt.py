"""Trained soft prompts: the learned-content baseline an RSP is compared against.

The soft prompt is L free vectors trained with the model frozen, by cross-entropy on reference
solutions. Training builds its inputs with the same `rsp.core.inputs.embed_prompts` code
that evaluation uses, at the same insertion point, with the same position ids as generation, so a
trained prompt and an RSP differ only in the vectors' content. Prompt-tuning adapters saved by PEFT
load as soft prompts too (their virtual tokens are a prefix, i.e. position "prepend").
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from rsp.config import config_dict, option, require, require_choice, require_min
from rsp.core.injection import Injection
from rsp.core.inputs import embed_prompts, positions_from_mask
from rsp.core.insert import INSERTION_POINTS, PromptTokens
from rsp.core.sampler import RSPSampler
from rsp.core.seeds import derive_seed
from rsp.models.loading import END_OF_TURN_TOKENS, LoadedModel, ModelBase
from rsp.reporting import pyplot
from rsp.runio import atomic_write_text
from rsp.tasks.base import Problem, TaskError
from rsp.tasks.prompts import PromptBuilder, fewshot_solution
from rsp.tasks.registry import load_task

log = logging.getLogger(__name__)

FORMAT = "rsp-soft-prompt/1"
TENSOR_KEY = "soft_prompt"
PEFT_KEY = "prompt_embeddings"
PEFT_FILE = "adapter_model.safetensors"
SOFT_PROMPT_FILE = "soft_prompt.safetensors"


class SoftPromptInjection(Injection):
    """The same L vectors for every attempt (a trained prompt has no randomness)."""

    name = "soft-prompt"

    def __init__(self, vectors: torch.Tensor, *, position: str = "after_generation_prompt") -> None:
        super().__init__(int(vectors.shape[0]), position)
        self.vectors = vectors

    def rows(self, seeds: Sequence[int | None]) -> torch.Tensor | None:
        return self.vectors.float().unsqueeze(0).expand(len(seeds), -1, -1)


@dataclass
class SoftPrompt:
    """Trained vectors (L, d) in the effective input-embedding space, with where they go and provenance."""

    vectors: torch.Tensor
    position: str
    metadata: dict[str, str]
    source: str

    @property
    def length(self) -> int:
        return int(self.vectors.shape[0])

    def check_compatible(self, lm: ModelBase) -> None:
        dim = int(self.vectors.shape[1])
        if dim != lm.hidden_size:
            why = f"soft prompt {self.source} has hidden size {dim} but model {lm.name} has {lm.hidden_size}"
            raise ValueError(f"{why}; it was trained for {self.metadata.get('model', 'another model')}")
        trained_for = self.metadata.get("model")
        if trained_for and trained_for != lm.name:
            log.warning(
                "soft prompt %s was trained for %s, now used with %s", self.source, trained_for, lm.name
            )


def save_soft_prompt(path: str | Path, vectors: torch.Tensor, position: str, metadata: dict) -> None:
    """Write key "soft_prompt" (L, d) fp32 plus string metadata, atomically."""
    path = Path(path)
    meta = {str(k): str(v) for k, v in metadata.items()}
    length, hidden_size = str(vectors.shape[0]), str(vectors.shape[1])
    meta.update(format=FORMAT, position=position, length=length, hidden_size=hidden_size)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({TENSOR_KEY: vectors.detach().float().cpu().contiguous()}, str(tmp), metadata=meta)
    tmp.replace(path)


def load_soft_prompt(path: str | Path) -> SoftPrompt:
    """Load a soft prompt: `rsp train-soft-prompt` output or a PEFT prompt-tuning adapter (file or dir)."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in (SOFT_PROMPT_FILE, PEFT_FILE) if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds neither {SOFT_PROMPT_FILE} nor a PEFT {PEFT_FILE}")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"soft prompt file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            meta = dict(f.metadata() or {})
            if TENSOR_KEY in keys:
                vectors = f.get_tensor(TENSOR_KEY).float()
                position = meta.get("position", "after_generation_prompt")
            elif PEFT_KEY in keys:
                vectors = f.get_tensor(PEFT_KEY).float()
                position = "prepend"  # PEFT concatenates virtual tokens before everything else
                meta = {**meta, **_peft_metadata(path, vectors)}
            else:
                found = sorted(keys)
                raise ValueError(f"{path} has no {TENSOR_KEY!r} or {PEFT_KEY!r} tensor (keys: {found})")
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from None
    if vectors.dim() != 2 or vectors.shape[0] < 1:
        shape = tuple(vectors.shape)
        raise ValueError(f"{path}: soft prompt must have shape (L, d) with L >= 1, got {shape}")
    if not torch.isfinite(vectors).all():
        raise ValueError(f"{path}: soft prompt contains NaN or inf")
    if position not in INSERTION_POINTS:
        raise ValueError(f"{path}: unknown insertion point {position!r} in metadata")
    return SoftPrompt(vectors, position, meta, str(path))


def _peft_metadata(path: Path, vectors: torch.Tensor) -> dict[str, str]:
    cfg_path = path.parent / "adapter_config.json"
    if not cfg_path.is_file():
        return {"source_format": "peft", "model": ""}
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type") not in (None, "PROMPT_TUNING"):
        why = f"PEFT adapter type {cfg.get('peft_type')} is not prompt tuning"
        raise ValueError(f"{path}: {why}; only PROMPT_TUNING adapters are input-embedding soft prompts")
    virtual = cfg.get("num_virtual_tokens")
    if virtual is not None and int(virtual) != vectors.shape[0]:
        raise ValueError(
            f"{path}: {vectors.shape[0]} prompt embeddings but num_virtual_tokens={virtual} "
            "(encoder-decoder adapters with several submodules are not supported)"
        )
    return {"source_format": "peft", "model": str(cfg.get("base_model_name_or_path") or "")}


_MODEL, _DATA = "model", "data"


@dataclass
class SoftPromptTrainConfig:
    """One soft-prompt training run (saved with the result): the flags of `rsp train-soft-prompt`."""

    _argument_group_name = "training"  # the --help group of the fields that name none
    model: str = option("smollm2-135m-instruct", "packaged name, local dir or Hub id", group=_MODEL)
    rsp_length: int = option(4, "L, the number of trained vectors", group=_MODEL)
    rsp_position: str = option(
        "after_generation_prompt",
        "insertion point the vectors are trained at (and evaluated at by default)",
        choices=INSERTION_POINTS,
        group=_MODEL,
    )
    data: tuple[str, ...] = option(
        default_factory=lambda: ("arith",),
        help="training sources: arith, gsm8k, ... (their train splits)",
        group=_DATA,
    )
    train_size: int = option(512, "training examples per source", group=_DATA)
    val_size: int = option(64, "held-out examples per source (early stopping)", group=_DATA)
    arith_steps: int = option(1, "synthetic task: operations per problem", group=_DATA)
    arith_max_value: int = option(10, "synthetic task: size of numbers", group=_DATA)
    steps: int = option(300, "optimizer steps at most")
    batch_size: int = option(8, "examples per step")
    lr: float = option(1e-2, "Adam learning rate")
    eval_every: int = option(25, "steps between held-out evaluations")
    patience: int = option(4, "evaluations without improvement before stopping")
    min_delta: float = option(0.0, "held-out improvement that counts as better")
    seed: int = option(0, "seed of the initialisation and the data order")
    prompt_style: str = option(
        "auto", "chat template, plain few-shot text, or auto", choices=("auto", "chat", "plain"), group=_DATA
    )
    max_solution_tokens: int = option(256, "reference solution tokens trained on, at most", group=_DATA)
    init_scale: float = option(1.0, "std multiplier of the RSP initialisation")
    dtype: str = option("float32", "training dtype (the vectors are saved in fp32)", group=_MODEL)
    device: str = option("cpu", "cpu, cuda, cuda:N or auto", group=_MODEL)
    max_seconds: float | None = option(None, "wall-clock budget (the best vectors so far are kept)")
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        require_choice(self.rsp_position, "rsp_position", INSERTION_POINTS)
        require(bool(self.data), "data", "must name at least one training source (arith, gsm8k, ...)")
        # val_size >= 1: early stopping needs a held-out split
        require_min(self, 1, "rsp_length", "train_size", "val_size", "steps", "batch_size", "eval_every")
        require_min(self, 1, "patience", "max_solution_tokens")
        require_min(self, 0, "min_delta", "init_scale")
        require_min(self, 0, "lr", "max_seconds", strict=True)


@dataclass(frozen=True)
class Example:
    prompt: PromptTokens
    target: tuple[int, ...]  # solution tokens (+ end-of-turn token); the only tokens with a loss
    source: str


@dataclass
class TrainResult:
    path: Path
    vectors: torch.Tensor
    initial_val_loss: float
    best_val_loss: float
    best_step: int
    steps_run: int
    stop_reason: str  # "steps", "patience" or "max_seconds"
    seconds: float


def _terminator(lm: LoadedModel, builder: PromptBuilder) -> list[int]:
    """The token that ends an answer, so the prompt also learns to stop: end-of-turn in chat, else EOS."""
    if builder.resolved_style == "chat":
        vocab = lm.tokenizer.get_vocab()
        for tok in END_OF_TURN_TOKENS:
            if tok in vocab and vocab[tok] in lm.stop_token_ids:
                return [vocab[tok]]
    eos = getattr(lm.tokenizer, "eos_token_id", None)
    return [eos] if isinstance(eos, int) and eos in lm.stop_token_ids else []


def _source_problems(
    source: str, config: SoftPromptTrainConfig
) -> tuple[list[Problem], list[Problem], object]:
    """(train, val) problems with reference solutions from one source's train split, and its task."""
    need = config.train_size + config.val_size
    if source == "arith":
        arith = {k: getattr(config, k) for k in ("arith_steps", "arith_max_value")}
        task = load_task("arith", split="train", limit=need, seed=config.seed, **arith)
        problems = list(task.problems)
    else:
        task = load_task(source, split="train")
        problems = [p for p in task.problems if p.solution]
        if not problems:
            raise TaskError(f"training source {source!r} has no reference solutions in its train split")
        random.Random(derive_seed(config.seed, "soft-prompt-data", source)).shuffle(problems)
        problems = problems[:need]
    if len(problems) <= config.val_size:
        why = f"training source {source!r} has {len(problems)} problems"
        raise TaskError(f"{why}; need more than --val-size={config.val_size}")
    return problems[config.val_size :], problems[: config.val_size], task


def build_examples(lm: LoadedModel, config: SoftPromptTrainConfig) -> tuple[list[Example], list[Example]]:
    train: list[Example] = []
    val: list[Example] = []
    for source in config.data:
        train_p, val_p, task = _source_problems(source, config)
        builder = PromptBuilder.for_task(lm.tokenizer, task, style=config.prompt_style)  # type: ignore[arg-type]
        end = _terminator(lm, builder)
        for problems, into in ((train_p, train), (val_p, val)):
            for p in problems:
                ids = list(lm.tokenizer(fewshot_solution(p), add_special_tokens=False)["input_ids"]) + end
                into.append(Example(builder.build(p), tuple(ids[: config.max_solution_tokens]), source))
    return train, val


def solution_loss(
    lm: LoadedModel, injection: Injection, examples: Sequence[Example]
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the solution tokens of `examples`, and the number of those tokens.

    Prompt + solution are laid out by `rsp.core.inputs.embed_prompts` with the slots at the prompt's insertion
    point (which lies inside the prompt, so the solution is unaffected), left-padded, with the
    position ids `generate` uses; only the last max(solution)+1 logits are computed.
    """
    prompts, solutions = [ex.prompt for ex in examples], [ex.target for ex in examples]
    seeds = [None] * len(examples)  # a trained prompt is the same for every row
    batch, embeds = embed_prompts(
        lm.embed, prompts, injection, seeds, pad_id=lm.pad_token_id, suffixes=solutions, grad=True
    )
    mask = batch.attention_mask.to(lm.device)
    keep = max(len(ex.target) for ex in examples) + 1
    out = lm.model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions_from_mask(mask),
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = out.logits[:, -keep:-1].float()  # position t predicts token t+1
    targets = batch.input_ids[:, -(keep - 1) :].to(lm.device)
    lengths = torch.tensor([len(ex.target) for ex in examples], device=lm.device)
    j = torch.arange(keep - 1, device=lm.device)
    on_solution = j.unsqueeze(0) >= (keep - 1 - lengths).unsqueeze(1)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (loss.view_as(targets) * on_solution).sum(), int(on_solution.sum())


def mean_loss(lm: LoadedModel, injection: Injection, examples: Sequence[Example], batch_size: int) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            s, n = solution_loss(lm, injection, examples[i : i + batch_size])
            total += float(s)
            count += n
    return total / max(count, 1)


def train_soft_prompt(
    lm: LoadedModel, config: SoftPromptTrainConfig, out: str | Path, *, progress: bool = True
) -> TrainResult:
    """Train L vectors with `lm` frozen; write soft_prompt.safetensors, loss.png and history.json to `out`."""
    config.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, val = build_examples(lm, config)
    init_seed = derive_seed(config.seed, "soft-prompt-init")
    init = RSPSampler(lm.embedding_stats(), config.rsp_length, config.init_scale).sample([init_seed])[0]
    vectors = torch.nn.Parameter(init.to(lm.device).clone())
    injection = SoftPromptInjection(vectors, position=config.rsp_position)
    optimizer = torch.optim.Adam([vectors], lr=config.lr)
    saved_flags = [p.requires_grad for p in lm.model.parameters()]
    was_training = lm.model.training
    lm.model.eval().requires_grad_(False)
    order_rng = random.Random(derive_seed(config.seed, "soft-prompt-order"))
    history: dict = {"train": [], "val": []}
    t0 = time.time()
    try:
        initial = mean_loss(lm, injection, val, config.batch_size)
        history["val"].append([0, initial])
        best, best_step, best_vectors = initial, 0, vectors.detach().clone()
        bad, stop_reason, step = 0, "steps", 0
        queue: list[int] = []
        bar = tqdm(total=config.steps, disable=not progress, unit="step", desc="soft prompt")
        for step in range(1, config.steps + 1):
            if len(queue) < config.batch_size:
                fresh = list(range(len(train)))
                order_rng.shuffle(fresh)
                queue += fresh
            picked, queue = queue[: config.batch_size], queue[config.batch_size :]
            loss_sum, count = solution_loss(lm, injection, [train[i] for i in picked])
            loss = loss_sum / max(count, 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history["train"].append([step, loss.item()])
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", best_val=f"{best:.3f}")
            out_of_time = config.max_seconds is not None and time.time() - t0 > config.max_seconds
            if step % config.eval_every == 0 or step == config.steps or out_of_time:
                current = mean_loss(lm, injection, val, config.batch_size)
                history["val"].append([step, current])
                if current < best - config.min_delta:
                    best, best_step, best_vectors, bad = current, step, vectors.detach().clone(), 0
                else:
                    bad += 1
                if bad >= config.patience:
                    stop_reason = "patience"
                    break
            if out_of_time:
                stop_reason = "max_seconds"
                break
        bar.close()
    finally:
        for p, flag in zip(lm.model.parameters(), saved_flags, strict=True):
            p.requires_grad_(flag)
        lm.model.train(was_training)
    seconds = time.time() - t0
    arith = f"arith(train,steps={config.arith_steps},max_value={config.arith_max_value},seed={config.seed})"
    data_desc = "+".join(arith if s == "arith" else f"{s}(train)" for s in config.data)
    metadata = {
        "model": lm.name,
        "data": data_desc,
        "train_examples": len(train),
        "val_examples": len(val),
        "steps": step,
        "best_step": best_step,
        "best_val_loss": f"{best:.6f}",
        "initial_val_loss": f"{initial:.6f}",
        "stop_reason": stop_reason,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "init": f"rsp(scale={config.init_scale},seed={init_seed})",
        "embed_scale": lm.embed_scale,
        "prompt_style": config.prompt_style,
        "train_dtype": str(lm.dtype).removeprefix("torch."),
        "seconds": f"{seconds:.1f}",
    }
    path = out / SOFT_PROMPT_FILE
    save_soft_prompt(path, best_vectors, config.rsp_position, metadata)
    history.update(config=config_dict(config), metadata=metadata)
    atomic_write_text(out / "history.json", json.dumps(history, indent=2) + "\n")
    plot_loss_curve(
        history, out / "loss.png", title=f"soft prompt L={config.rsp_length} on {lm.name} ({data_desc})"
    )
    return TrainResult(path, best_vectors.cpu(), initial, best, best_step, step, stop_reason, seconds)


def plot_loss_curve(history: dict, path: Path, *, title: str) -> None:
    """Training loss per batch and its running mean, held-out loss, and a line at the kept (best) step."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    steps, losses = zip(*history["train"], strict=True)
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, lw=1, label="train (batch)")
    window = max(1, len(losses) // 20)
    windows = [losses[max(0, i - window + 1) : i + 1] for i in range(len(losses))]
    means = [sum(w) / len(w) for w in windows]
    ax.plot(steps, means, color="tab:blue", lw=1.5, label=f"train (mean of {window})")
    vs, vl = zip(*history["val"], strict=True)
    ax.plot(vs, vl, "o-", color="tab:orange", ms=4, label="held-out")
    ax.axvline(vs[vl.index(min(vl))], color="grey", ls=":", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy per solution token")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if all(math.isfinite(x) for x in losses):
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

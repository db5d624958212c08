"""RSP-DAPO in plain torch: the DAPO recipe with a fresh Random Soft Prompt per rollout.

The math follows TRL GRPOTrainer with `loss_type="dapo"` (token-level aggregation, clip-higher, no KL
by default). What RSP adds: each rollout's RSP seed is stored with it, and every log-probability
computation rebuilds the exact same input (same slots, same RSP rows), so the importance ratio is
exactly 1 before an update and the gradient is that of the policy that produced the sample.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from rsp.core.injection import Injection, NoInjection, RandomSoftPrompt
from rsp.core.inputs import embed_continued
from rsp.core.insert import PromptTokens
from rsp.core.seeds import derive_seed
from rsp.engines import HFEngine, SamplingConfig
from rsp.engines.hook import ban_token_in_logits
from rsp.models.loading import LoadedModel, input_embeddings
from rsp.tasks.base import Problem
from rsp.train.config import DAPOConfig

RewardFn = Callable[[str, str], bool]  # (completion text, gold answer) -> correct


@dataclass
class Rollout:
    problem_id: str
    prompt: PromptTokens
    rsp_seed: int | None
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str
    correct: bool
    reward: float = 0.0
    advantage: float = 0.0


@dataclass
class SampledBatch:
    """Groups kept by dynamic sampling, plus what it cost to fill them."""

    groups: list[list[Rollout]]
    all_rollouts: list[Rollout]
    groups_sampled: int
    extra_rounds: int
    shortfall: int


def overlong_penalty(length: int, max_len: int, buffer: int, penalty: float) -> float:
    """DAPO Eq. 13: 0 up to max_len - buffer, then linear down to -penalty at max_len, -penalty beyond."""
    free = max_len - buffer
    if buffer <= 0 or length <= free:
        return 0.0
    return (free - length) / buffer * penalty if length <= max_len else -penalty


def shaped_reward(cfg: DAPOConfig, correct: bool, length: int) -> float:
    """Correctness reward plus DAPO overlong shaping; the one formula both trainers use."""
    base = cfg.reward_correct if correct else cfg.reward_wrong
    return base + overlong_penalty(length, cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty)


def group_advantages(rewards: Sequence[float]) -> list[float]:
    """GRPO group normalisation (R - mean) / std; a constant group gets zero advantage."""
    t = torch.tensor(rewards, dtype=torch.float64)
    std = t.std(unbiased=True) if len(rewards) > 1 else torch.tensor(0.0)
    if std < 1e-8:
        return [0.0] * len(rewards)
    return ((t - t.mean()) / std).tolist()


def unfreeze_for_training(model: torch.nn.Module) -> None:
    """Full fine-tuning: `load_model` hands over a frozen model; train all of it but the input embeddings
    (the RSP statistics were fitted on them)."""
    model.requires_grad_(True)
    input_embeddings(model).weight.requires_grad_(False)


def build_injection(lm: LoadedModel, cfg: DAPOConfig) -> Injection:
    if cfg.rsp_length == 0:
        return NoInjection(cfg.rsp_position)
    return RandomSoftPrompt(
        lm.embedding_stats(), cfg.rsp_length, scale=cfg.rsp_scale, position=cfg.rsp_position
    )


def completion_logprobs(
    lm: LoadedModel,
    injection: Injection,
    prompts: Sequence[PromptTokens],
    seeds: Sequence[int | None],
    completions: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
    model: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs, completion mask and entropies (each (B, T)) of `completions`, on inputs rebuilt
    exactly as at rollout time (the stored seed's RSP rows in the slots, the completion right-padded)."""
    seq = embed_continued(lm.embed, prompts, injection, seeds, completions, pad_id=lm.pad_token_id, grad=True)
    T, device = seq.continuation_ids.shape[1], lm.device
    # Only the T positions that predict completion tokens go through the LM head: with a 49k-262k vocabulary
    # the full-sequence logits (and their autograd copies) dominated peak memory (9 GB at 16 x 280 tokens).
    logits = seq.forward(model or lm.model, T + 1).logits[:, :T].float()
    logp_all = torch.log_softmax(ban_token_in_logits(logits, lm.placeholder_id) / temperature, dim=-1)
    logp = logp_all.gather(-1, seq.continuation_ids.to(device).unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():  # a logged statistic, not part of the loss: keep it out of the autograd graph
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, seq.continuation_mask.to(device).float(), entropy


def dapo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float,
    eps_high: float,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate with clip-higher, averaged over every completion token in the batch (`num_tokens`:
    the whole batch's count when this call sees one micro-batch, so the micro-batch losses sum to it)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    per_token = -torch.min(unclipped, clipped)
    if beta > 0 and ref_logp is not None:
        per_token = per_token + beta * (torch.exp(ref_logp - logp) - (ref_logp - logp) - 1)
    n = mask.sum().clamp(min=1) if num_tokens is None else max(float(num_tokens), 1.0)
    loss = (per_token * mask).sum() / n
    with torch.no_grad():
        is_clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
        clip_frac = float((is_clipped.float() * mask).sum() / n)
    return loss, {"clip_fraction": clip_frac}


class DataCursor:
    """An endless, seeded stream of problem indices (a new permutation each epoch), resumable by position."""

    def __init__(self, n: int, seed: int, position: int = 0) -> None:
        self.n, self.seed, self.position = n, seed, position

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            epoch, i = divmod(self.position, self.n)
            order = list(range(self.n))
            random.Random(derive_seed(self.seed, "data", epoch)).shuffle(order)
            out.append(order[i])
            self.position += 1
        return out


class DAPOTrainer:
    """One object per run: sampling with RSP, dynamic sampling, and the DAPO update."""

    def __init__(
        self,
        lm: LoadedModel,
        cfg: DAPOConfig,
        problems: Sequence[Problem],
        prompt_of: Callable[[Problem], PromptTokens],
        reward_fn: RewardFn,
        stop_strings: Sequence[str] = (),
    ) -> None:
        self.cfg = cfg.validate()
        self.lm, self.problems, self.prompt_of, self.reward_fn = lm, list(problems), prompt_of, reward_fn
        self.stop_strings = tuple(stop_strings)
        self.injection = build_injection(lm, cfg)  # stats fitted before any update: RSP rows stay constants
        self.peft_model = None
        if cfg.lora:
            from peft import get_peft_model

            # the adapters go into lm.model in place, so lm.model.generate uses them
            self.peft_model = get_peft_model(lm.model, cfg.lora_config())
        else:
            unfreeze_for_training(lm.model)
        frozen_copy = cfg.beta > 0 and not cfg.lora  # the KL reference (LoRA: the model, adapters off)
        self.ref_model = copy.deepcopy(lm.model).eval().requires_grad_(False) if frozen_copy else None
        self.trainable = [p for p in lm.model.parameters() if p.requires_grad]
        if not self.trainable:
            why = "check lora_target_modules against the model's layer names"
            raise RuntimeError(f"no trainable parameters: {why}")
        self.optimizer = torch.optim.AdamW(self.trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.engine = HFEngine(lm)
        self.sampling = SamplingConfig(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
        self.cursor = DataCursor(len(self.problems), cfg.seed)
        self.step = 0
        self.last_rollouts: list[Rollout] = []
        self.last_kept: list[bool] = []

    def rollout_group(self, problem: Problem, step: int, round_: int) -> list[Rollout]:
        cfg = self.cfg
        prompt = self.prompt_of(problem)
        base = derive_seed(cfg.seed, "rollout", step, round_)
        seeds = [self.injection.seed_for(base, problem.id, i) for i in range(cfg.group_size)]
        self.lm.model.eval()
        comps = self.engine.generate(
            [prompt] * cfg.group_size,
            self.injection,
            seeds,
            self.sampling,
            decode_seed=derive_seed(base, "decode", problem.id),
            stop_strings=self.stop_strings,
        )
        group = []
        for seed, c in zip(seeds, comps, strict=True):
            tokens = tuple(c.token_ids)
            if c.stop_token is not None and len(tokens) < cfg.max_new_tokens:
                # The engine strips the stop token; train on it too so the policy learns when to stop.
                tokens = tokens + (c.stop_token,)
            correct = bool(self.reward_fn(c.text, problem.answer))
            reward = shaped_reward(cfg, correct, len(tokens))
            group.append(Rollout(problem.id, prompt, seed, tokens, c.text, c.finish_reason, correct, reward))
        for r, a in zip(group, group_advantages([r.reward for r in group]), strict=True):
            r.advantage = a
        return group

    def sample_batch(self, step: int) -> SampledBatch:
        """Dynamic sampling: drop groups whose correctness is all equal; refill in extra rounds (bounded)."""
        cfg = self.cfg
        kept: list[list[Rollout]] = []
        everything: list[Rollout] = []
        sampled = 0
        round_ = 0
        while True:
            for idx in self.cursor.take(cfg.prompts_per_step):
                group = self.rollout_group(self.problems[idx], step, round_)
                sampled += 1
                everything.extend(group)
                if len({r.correct for r in group}) > 1 and len(kept) < cfg.prompts_per_step:
                    kept.append(group)
            if len(kept) >= cfg.prompts_per_step or round_ >= cfg.max_extra_rounds:
                break
            round_ += 1
        return SampledBatch(kept, everything, sampled, round_, cfg.prompts_per_step - len(kept))

    def logprobs(self, rollouts: Sequence[Rollout], model: torch.nn.Module | None = None):
        prompts, seeds = [r.prompt for r in rollouts], [r.rsp_seed for r in rollouts]
        tokens = [r.token_ids for r in rollouts]
        return completion_logprobs(
            self.lm, self.injection, prompts, seeds, tokens, temperature=self.cfg.temperature, model=model
        )

    def train_step(self) -> dict:
        t0 = time.perf_counter()
        step = self.step
        sb = self.sample_batch(step)
        self.last_rollouts = sb.all_rollouts
        rollouts = [r for g in sb.groups for r in g]
        kept_ids = {id(r) for r in rollouts}
        self.last_kept = [id(r) in kept_ids for r in sb.all_rollouts]
        m: dict = {
            "step": step + 1,
            "reward_mean": _mean([r.reward for r in sb.all_rollouts]),
            "accuracy": _mean([float(r.correct) for r in sb.all_rollouts]),
            "frac_groups_kept": len(sb.groups) / sb.groups_sampled,
            "groups_kept": len(sb.groups),
            "groups_sampled": sb.groups_sampled,
            "extra_rounds": sb.extra_rounds,
            "shortfall": sb.shortfall,
            "response_length": _mean([len(r.token_ids) for r in sb.all_rollouts]),
            "truncated_frac": _mean([float(r.finish_reason == "length") for r in sb.all_rollouts]),
            "loss": 0.0,
            "entropy": float("nan"),
            "clip_fraction": 0.0,
            "grad_norm": 0.0,
            "updated": False,
        }
        if rollouts and any(len(r.token_ids) for r in rollouts):
            m.update(self._update(rollouts))
        self.step += 1
        m["data_cursor"] = self.cursor.position
        m["step_time"] = time.perf_counter() - t0
        return m

    def _update(self, rollouts: list[Rollout]) -> dict:
        """DAPO update(s) on the kept rollouts in micro-batches (all at once peaked near 9 GB for 16 x 280
        tokens on SmolLM2); each micro-batch loss is divided by the whole batch's token count, so the
        accumulated gradient equals the one-pass gradient."""
        cfg = self.cfg
        mb = cfg.micro_batch_size or len(rollouts)
        starts = range(0, len(rollouts), mb)
        chunks = [rollouts[i : i + mb] for i in starts]
        kept = [not (cfg.mask_truncated and r.finish_reason == "length") for r in rollouts]
        num_tokens = float(sum(len(r.token_ids) for r, k in zip(rollouts, kept, strict=True) if k))
        as_tensor = partial(torch.tensor, dtype=torch.float32, device=self.lm.device)
        advs = [as_tensor([r.advantage for r in c]) for c in chunks]
        keeps = [as_tensor(kept[i : i + mb]) for i in starts]
        self.lm.model.train()
        olds: list[torch.Tensor | None] = [None] * len(chunks)
        refs: list[torch.Tensor | None] = [None] * len(chunks)
        with torch.no_grad():
            for i, c in enumerate(chunks):
                if cfg.updates_per_batch > 1:
                    olds[i] = self.logprobs(c)[0]
                if cfg.beta > 0:
                    if self.peft_model is not None:
                        with self.peft_model.disable_adapter():
                            refs[i] = self.logprobs(c)[0]
                    else:
                        refs[i] = self.logprobs(c, model=self.ref_model)[0]
        stats = []
        eps = (cfg.epsilon_low, cfg.epsilon_high)
        for _ in range(cfg.updates_per_batch):
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum = clip_sum = ent_sum = 0.0
            for c, adv, keep, old, ref in zip(chunks, advs, keeps, olds, refs, strict=True):
                logp, mask, ent = self.logprobs(c)
                mask = mask * keep.unsqueeze(-1)
                old = old if old is not None else logp.detach()
                loss, info = dapo_loss(logp, old, adv, mask, *eps, ref, cfg.beta, num_tokens=num_tokens)
                loss.backward()
                loss_sum += float(loss.detach())
                clip_sum += info["clip_fraction"]
                ent_sum += float((ent * mask).sum())
            gn = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.max_grad_norm)
            self.optimizer.step()
            entropy = ent_sum / max(num_tokens, 1.0)
            stats.append(
                {"loss": loss_sum, "clip_fraction": clip_sum, "entropy": entropy, "grad_norm": float(gn)}
            )
        self.lm.model.eval()
        out = {k: _mean([s[k] for s in stats]) for k in stats[0]}
        out["updated"] = True
        return out

    def state_dict(self) -> dict:
        names = {id(p): n for n, p in self.lm.model.named_parameters()}
        return {
            "step": self.step,
            "cursor": self.cursor.position,
            "trainable": {names[id(p)]: p.detach().cpu().clone() for p in self.trainable},
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        params = dict(self.lm.model.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.cursor.position = int(state["cursor"])


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else math.nan

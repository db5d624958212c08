"""RSP-DAPO on TRL: a `GRPOTrainer` subclass whose every rollout carries its own Random Soft Prompt.

How the RSP gets in without forking TRL's generation and loss code:
- each prompt gets L placeholder token ids at the insertion point (`_tokenize_prompts`);
- a forward hook on the input-embedding layer overwrites, row by row, the L embeddings that follow the
  first placeholder with that row's RSP (rebuilt from a per-rollout seed), so `generate` and every
  log-probability pass see the same vectors; decode steps carry no placeholder and pass through;
- the seeds travel with the rollouts as an `rsp_seeds` tensor (leading batch dim), which TRL shuffles and
  splits together with the other tensors; `_get_per_token_logps_and_entropies` re-activates the right seeds
  for each chunk it scores, so old, reference and current log-probs all use the rollout's own RSP.

DAPO ingredients: `loss_type="dapo"`, clip-higher (`epsilon_high`), no KL (`beta=0`), overlong reward
shaping in the reward function, optional truncation masking (TRL's `mask_truncated_completions`), and
dynamic sampling in its masking form: groups whose rewards are all equal get a zero loss mask, so they
neither move the policy nor count in the token normaliser. TRL's sampler fixes the batch, so the
oversample-and-refill of DAPO is not done here; the native trainer (`rsp train`, default) does it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch

from rsp.core.injection import Injection
from rsp.core.insert import PromptTokens
from rsp.core.seeds import derive_seed
from rsp.train.config import DAPOConfig
from rsp.train.dapo import shaped_reward


def placeholder_id(tokenizer, prompts: Sequence[PromptTokens]) -> int:
    """A token id that none of the prompts contains (unk if unused, else the highest unused vocabulary id).

    The hook finds the slots as the first placeholder in each row, so it must not occur earlier in a prompt.
    """
    used = {t for p in prompts for t in p.ids} | {tokenizer.pad_token_id}
    unk = getattr(tokenizer, "unk_token_id", None)
    candidates = ([unk] if unk is not None else []) + list(range(len(tokenizer) - 1, -1, -1))
    for c in candidates:
        if c not in used:
            return int(c)
    raise ValueError("every token id occurs in some prompt; no placeholder id is free")


class RSPEmbeddingHook:
    """Writes each row's RSP over the L embeddings that follow the row's first placeholder id."""

    def __init__(self, injection: Injection, placeholder: int) -> None:
        self.injection, self.placeholder = injection, placeholder
        self.seeds: list[int | None] | None = None

    def __call__(self, module, args, output):
        if self.seeds is None or self.injection.length == 0:
            return output
        (input_ids,) = args[:1]
        L = self.injection.length
        if input_ids.shape[1] <= L:
            return output  # a decode step (the RSP is already in the cache), even if it sampled the placeholder id
        hits = input_ids == self.placeholder
        rows_with_slots = hits.any(dim=1)
        if not bool(rows_with_slots.any()):
            return output
        if input_ids.shape[0] != len(self.seeds):
            raise RuntimeError(f"RSP hook: batch of {input_ids.shape[0]} rows but {len(self.seeds)} seeds are active")
        rsp = self.injection.rows(list(self.seeds))
        output = output.clone()
        starts = hits.int().argmax(dim=1)
        for b in torch.nonzero(rows_with_slots).flatten().tolist():
            s = int(starts[b])
            if not bool(hits[b, s:s + L].all()) or s + L > input_ids.shape[1]:
                raise RuntimeError(f"RSP hook: row {b} does not hold {L} consecutive placeholder ids")
            output[b, s:s + L] = rsp[b].to(device=output.device, dtype=output.dtype)
        return output

    @contextmanager
    def active(self, seeds: Sequence[int | None]):
        previous, self.seeds = self.seeds, list(seeds)
        try:
            yield
        finally:
            self.seeds = previous


def rollout_seeds(injection: Injection, rsp_seed: int, round_key: Sequence[int], n: int) -> list[int | None]:
    """The n RSP seeds of one generation round; `round_key` = (process, step, call) keeps ranks and steps apart."""
    base = derive_seed(rsp_seed, "trl-rollout", *round_key)
    return [injection.seed_for(base, "row", i) for i in range(n)]


def local_constant_rows(gathered_adv: torch.Tensor, group_size: int, process_index: int, local_n: int) -> torch.Tensor:
    """Which of this process's rows belong to a group whose advantages are all zero (all rewards equal).

    `gathered_adv` is the advantage vector of the whole generation batch in process order (what TRL slices
    `process_index * local_n : (process_index + 1) * local_n` from); groups are consecutive runs of `group_size`.
    """
    if gathered_adv.numel() % group_size:
        raise ValueError(f"{gathered_adv.numel()} rollouts do not split into groups of {group_size}")
    constant = (gathered_adv.view(-1, group_size).abs() < 1e-8).all(dim=1).repeat_interleave(group_size)
    return constant[process_index * local_n:(process_index + 1) * local_n]


def _grpo_trainer_class():
    from trl import GRPOTrainer

    class RSPGRPOTrainer(GRPOTrainer):
        """GRPOTrainer + a fresh RSP per rollout, re-inserted identically in every log-prob pass."""

        def __init__(self, *args, injection: Injection, prompt_lookup: dict[str, PromptTokens], rsp_seed: int = 0,
                     **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.injection = injection
            self.prompt_lookup = prompt_lookup
            self.rsp_seed = rsp_seed
            self.placeholder = placeholder_id(self.processing_class, list(prompt_lookup.values()))
            self.rsp_hook = RSPEmbeddingHook(injection, self.placeholder)
            self._handle = self.model.get_input_embeddings().register_forward_hook(self.rsp_hook)
            if self.ref_model is not None:  # beta > 0 without PEFT: a separate reference copy must see the RSP too
                ref = self.accelerator.unwrap_model(self.ref_model)
                self._ref_handle = ref.get_input_embeddings().register_forward_hook(self.rsp_hook)
            if self.use_vllm and self.rollout_func is None and injection.length > 0:
                raise ValueError("use_vllm=True would sample from the placeholder ids without the RSP; pass "
                                 "rollout_func=make_vllm_rollout_func(...), which sends the RSP as prompt embeddings")
            self._rollout_round = 0
            self._pending_seeds: list[int | None] | None = None
            self._scoring_seeds: list[int | None] | None = None

        # ----------------------------------------------------------- prompts with slots
        def _tokenize_prompts(self, prompts: list):
            ids = []
            for text in prompts:
                if text not in self.prompt_lookup:
                    raise KeyError(f"prompt not built by rsp: {text[:60]!r}")
                p = self.prompt_lookup[text]
                at = p.insert_index(self.injection.position)
                ids.append(list(p.ids[:at]) + [self.placeholder] * self.injection.length + list(p.ids[at:]))
            return ids, None, {}

        # ----------------------------------------------------------- rollouts
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            seeds = self.next_rollout_seeds(len(prompt_ids))
            with self.rsp_hook.active(seeds):
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                     has_tool_images)

        def round_key(self) -> tuple[int, int, int]:
            """(process, optimizer step, call) of the current generation round: distinct on every rank, and a
            resumed run does not replay the seeds of the steps it already trained on."""
            return self.accelerator.process_index, int(self.state.global_step), self._rollout_round

        def next_rollout_seeds(self, n: int) -> list[int | None]:
            """Fresh per-rollout RSP seeds for the next generation round (also used by vLLM rollouts)."""
            self._pending_seeds = rollout_seeds(self.injection, self.rsp_seed, self.round_key(), n)
            self._rollout_round += 1
            return self._pending_seeds

        def _generate_and_score_completions(self, inputs):
            self._pending_seeds = None
            # Old / reference log-probs computed inside super() score the rows in rollout order.
            self._scoring_seeds = None
            output = super()._generate_and_score_completions(inputs)
            seeds = self._pending_seeds
            if seeds is None:
                raise RuntimeError("no RSP seeds were recorded for this rollout batch")
            output["rsp_seeds"] = torch.tensor([-1 if s is None else s for s in seeds], dtype=torch.long,
                                               device=output["completion_ids"].device)
            self._mask_constant_groups(output)
            return output

        def _mask_constant_groups(self, output: dict) -> None:
            """Dynamic sampling, masking form: drop groups with all-equal rewards from the loss and normaliser."""
            adv = output["advantages"]
            if adv.dim() != 1:
                return
            # A group can span ranks (TRL slices the gathered batch per process), so decide on the gathered vector.
            everything = self.accelerator.gather(adv)
            constant = local_constant_rows(everything, self.num_generations, self.accelerator.process_index,
                                           adv.numel())
            output["completion_mask"] = output["completion_mask"] * (~constant).unsqueeze(1).int()
            loss_mask = output["completion_mask"] if "tool_mask" not in output else output["completion_mask"] * output["tool_mask"]
            output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
            kept_groups = 1 - float(local_constant_rows(everything, self.num_generations, 0,
                                                        everything.numel()).float().mean())
            # Already global (from the gathered batch); written straight into this step's metrics, because
            # `_log_metric` values are only flushed by the *next* call of `_generate_and_score_completions`.
            self._metrics["train" if self.model.training else "eval"]["rsp/frac_groups_kept"].append(kept_groups)

        # ----------------------------------------------------------- scoring with the stored RSP
        def _compute_loss(self, model, inputs):
            seeds = [None if s < 0 else int(s) for s in inputs["rsp_seeds"].tolist()]
            self._scoring_seeds = seeds
            try:
                return super()._compute_loss(model, inputs)
            finally:
                self._scoring_seeds = None

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                               batch_size=None, **kwargs):
            seeds = self._scoring_seeds if self._scoring_seeds is not None else self._pending_seeds
            if seeds is None or len(seeds) != input_ids.size(0):
                raise RuntimeError("scoring a batch without its RSP seeds would use the wrong (or no) RSP")
            step = batch_size or input_ids.size(0)
            parts = []
            for start in range(0, input_ids.size(0), step):
                end = min(start + step, input_ids.size(0))
                with self.rsp_hook.active(seeds[start:end]):
                    parts.append(super()._get_per_token_logps_and_entropies(
                        model, input_ids[start:end], attention_mask[start:end], logits_to_keep, batch_size=None,
                        **kwargs))
            logps = torch.cat([p[0] for p in parts], dim=0)
            ents = torch.cat([p[1] for p in parts], dim=0) if parts[0][1] is not None else None
            aux = torch.stack([p[2] for p in parts]).mean() if parts[0][2] is not None else None
            return logps, ents, aux

    return RSPGRPOTrainer


def __getattr__(name: str) -> Any:  # the TRL import is deferred so `import rsp.train` stays light
    if name == "RSPGRPOTrainer":
        return _grpo_trainer_class()
    raise AttributeError(name)


def make_vllm_rollout_func(llm, lm, sampling, *, stop_strings: Sequence[str] = ()):
    """A TRL `rollout_func` that samples on vLLM with one prompt-embeddings request per rollout.

    Each rollout's RSP rows are written into its prompt embeddings (`rsp.backends.vllm.build_requests`, never
    n>1); the returned `prompt_ids` carry the placeholder ids, and the seeds stay on the trainer (and come back
    as the extra field `rsp_seed`, which TRL hands to reward functions), so the training-side log-prob passes
    rebuild the same RSP through the embedding hook. `logprobs` are the sampled tokens' vLLM log-probs when
    the engine returns them (requested with `logprobs=0`), else None. `llm` is a `vllm.LLM` created with
    `enable_prompt_embeds=True` whose weights the caller keeps in sync with the policy (TRL does this for its
    own engine only when `use_vllm=True`).
    """
    from rsp.backends.vllm import build_requests, sampling_params

    def rollout(prompts: list[str], trainer) -> dict:
        prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
        key = trainer.round_key()
        seeds = trainer.next_rollout_seeds(len(prompts))
        tokens = [trainer.prompt_lookup[p] for p in prompts]
        requests = build_requests(lm, tokens, trainer.injection, seeds,
                                  decode_seed=derive_seed(trainer.rsp_seed, "vllm-decode", *key))
        params = []
        for r in requests:
            sp = sampling_params(sampling, r.seed, lm.stop_token_ids, stop_strings)
            if hasattr(sp, "logprobs"):
                sp.logprobs = 0  # vLLM then returns the sampled token's log-prob at every position
            params.append(sp)
        outputs = llm.generate([r.as_prompt() for r in requests], params, use_tqdm=False)
        completion_ids = [list(o.outputs[0].token_ids) for o in outputs]
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids,
                "logprobs": sampled_logprobs(outputs, completion_ids), "rsp_seed": list(seeds)}

    return rollout


def sampled_logprobs(outputs, completion_ids: list[list[int]]) -> list[list[float]] | None:
    """Per-token log-probs of the sampled tokens from vLLM outputs (None if any output lacks them)."""
    result = []
    for o, ids in zip(outputs, completion_ids, strict=True):
        per_pos = getattr(o.outputs[0], "logprobs", None)
        if per_pos is None or len(per_pos) != len(ids):
            return None
        result.append([float(d[t].logprob) for d, t in zip(per_pos, ids, strict=True)])
    return result


def grpo_config(cfg: DAPOConfig, output_dir: str, **overrides):
    """Map the project's DAPOConfig onto TRL's GRPOConfig (DAPO recipe)."""
    from trl import GRPOConfig

    settings: dict[str, Any] = dict(
        output_dir=output_dir, loss_type="dapo", epsilon=cfg.epsilon_low, epsilon_high=cfg.epsilon_high,
        beta=cfg.beta, num_generations=cfg.group_size, max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature, top_p=1.0, top_k=0, mask_truncated_completions=cfg.mask_truncated,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=cfg.group_size * cfg.prompts_per_step, gradient_accumulation_steps=1,
        num_iterations=cfg.updates_per_batch, max_steps=cfg.steps, seed=cfg.seed, use_cpu=cfg.device == "cpu",
        report_to="none", logging_steps=1, save_strategy="no", scale_rewards="group", bf16=False,
    )
    settings.update(overrides)
    return GRPOConfig(**settings)


def dapo_reward(cfg: DAPOConfig, correct_fn):
    """TRL reward function: +/- correctness from the project's grader plus DAPO overlong shaping."""

    def reward(prompts, completions, completion_ids, answer, log_metric=None, **_):
        out, correct = [], []
        for text, ids, gold in zip(completions, completion_ids, answer, strict=True):
            correct.append(bool(correct_fn(text, gold)))
            out.append(shaped_reward(cfg, correct[-1], len(ids)))
        if log_metric is not None and correct:  # TRL averages it over ranks: the native trainer's `accuracy`
            log_metric("accuracy", sum(correct) / len(correct))
        return out

    reward.__name__ = "rsp_dapo_reward"
    return reward


def build_trl_trainer(cfg: DAPOConfig, lm, problems, prompt_of, correct_fn, output_dir: str, **overrides):
    """An RSPGRPOTrainer for `problems` (dataset columns: prompt = a lookup key, answer = gold)."""
    from datasets import Dataset

    from rsp.train.dapo import build_injection

    injection = build_injection(lm, cfg)
    lookup: dict[str, PromptTokens] = {}
    rows = []
    for p in problems:
        key = f"{p.id}\u241f{p.question}"
        lookup[key] = prompt_of(p)
        rows.append({"prompt": key, "answer": p.answer})
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=list(cfg.lora_target_modules), bias="none", task_type="CAUSAL_LM")
    trainer_cls = _grpo_trainer_class()
    return trainer_cls(model=lm.model, reward_funcs=[dapo_reward(cfg, correct_fn)],
                       args=grpo_config(cfg, output_dir, **overrides), train_dataset=Dataset.from_list(rows),
                       processing_class=lm.tokenizer, peft_config=peft_config, injection=injection,
                       prompt_lookup=lookup, rsp_seed=cfg.seed)

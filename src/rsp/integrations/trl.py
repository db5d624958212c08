"""RSP on TRL: `RSPGRPOTrainer` is TRL's `GRPOTrainer` in which every rollout carries its own Random
Soft Prompt.

Why a subclass and not a fork: a TRL user keeps their script (datasets, reward functions, `GRPOConfig`,
PEFT, accelerate/DeepSpeed), changes one class name and adds `rsp_config=rsp.RSPConfig(...)`. The RSP gets
in at the narrowest points of TRL 1.16.0 (an exact pin: these are private methods): `_tokenize_prompts`,
where `rsp.core.inputs.layout` puts L placeholder ids into TRL's prompt ids; `rsp.attach`'s embedding
hook, whose seeds are pinned for the rollout and for every chunk scored, so generation and the old,
reference and current log-probs all see the rollout's own RSP (the seeds travel as an `rsp_seeds`
tensor); and, with `use_vllm=True`, one mixed token/embedding vLLM request per rollout (server mode:
`python -m rsp.integrations.trl_vllm_serve`). `RSPConfig(length=0)` is plain `GRPOTrainer`.

DAPO on top (`rsp train --trainer trl`): `loss_type="dapo"`, clip-higher, overlong shaping as a reward,
and `mask_constant_groups=True`, dynamic sampling in its masking form (TRL's sampler fixes the batch, so
there is no oversample-and-refill; the native trainer does that).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, cast

import torch
from accelerate.utils import broadcast_object_list, gather_object
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer
from trl.data_utils import is_conversational
from trl.generation import vllm_generation

from rsp.core.injection import Injection, NoInjection
from rsp.core.inputs import layout
from rsp.core.insert import PromptTokens
from rsp.core.seeds import derive_seed
from rsp.engines.hook import BANNED_LOGIT, RSPHandle, attach
from rsp.engines.vllm import build_requests
from rsp.integrations.trl_vllm_serve import encode_request, sampled_logprobs
from rsp.methods import RSPConfig, build_method, get_method
from rsp.models.loading import input_embeddings, output_embeddings, wrap_model
from rsp.tasks.prompts import INSTRUCTION
from rsp.train.config import DAPOConfig, DAPOConfigError
from rsp.train.dapo import build_injection, shaped_reward, unfreeze_for_training

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SERVER_COMMAND = "python -m rsp.integrations.trl_vllm_serve --model MODEL"
_INSTEAD = "use after_generation_prompt or prepend"
_AT_TURN_END = "position 'end_of_user_turn'"


def rollout_seeds(injection: Injection, rsp_seed: int, round_key: Sequence[int], n: int) -> list[int | None]:
    """The n RSP seeds of one generation round; `round_key` = (process, step, call) keeps them apart."""
    base = derive_seed(rsp_seed, "trl-rollout", *round_key)
    return [injection.seed_for(base, "row", i) for i in range(n)]


def local_constant_rows(
    gathered_adv: torch.Tensor, group_size: int, process_index: int, local_n: int
) -> torch.Tensor:
    """Which of this process's rows are in a group whose advantages are all zero (all rewards equal);
    `gathered_adv` is the whole batch's, in process order, groups consecutive runs of `group_size`."""
    if gathered_adv.numel() % group_size:
        raise ValueError(f"{gathered_adv.numel()} rollouts do not split into groups of {group_size}")
    constant = (gathered_adv.view(-1, group_size).abs() < 1e-8).all(dim=1).repeat_interleave(group_size)
    return constant[process_index * local_n : (process_index + 1) * local_n]


def last_user_content(messages: Sequence[dict]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    if not users or not isinstance(users[-1].get("content"), str) or not users[-1]["content"]:
        raise ValueError(f"{_AT_TURN_END} needs a last user message with text; {_INSTEAD}")
    return users[-1]["content"]


def user_turn_offset(tokenizer, text: str, content: str, ids: Sequence[int]) -> int:
    """Token offset in TRL's `ids` of the end of `content` in the rendered prompt `text`: accepted only if
    tokenising the two halves separately gives back exactly TRL's ids (no token straddles the cut)."""
    cut = text.rfind(content)
    if cut < 0:
        raise ValueError(f"{_AT_TURN_END}: the chat template changed the user's text; {_INSTEAD}")
    cut += len(content)
    head = list(tokenizer(text[:cut], add_special_tokens=False)["input_ids"])
    tail = list(tokenizer(text[cut:], add_special_tokens=False)["input_ids"]) if cut < len(text) else []
    if head + tail != list(ids):
        raise ValueError(f"{_AT_TURN_END}: a token straddles the end of the user turn; {_INSTEAD}")
    return len(head)


@contextmanager
def _engine_with_prompt_embeds(extra: dict) -> Iterator[None]:
    """While TRL builds its colocated `vllm.LLM`, add `enable_prompt_embeds` and `extra` to its arguments."""
    original = getattr(vllm_generation, "LLM", None)
    if original is None:  # vLLM is not importable: TRL raises its own error
        yield
        return

    def build(*args: Any, **kwargs: Any):
        return original(*args, **{**kwargs, **extra, "enable_prompt_embeds": True})

    vllm_generation.LLM = build
    try:
        yield
    finally:
        vllm_generation.LLM = original


@contextmanager
def banned_in_fused_head(model: torch.nn.Module, token_id: int) -> Iterator[None]:
    """Inside, TRL's fused LM head scores with the placeholder's logit at BANNED_LOGIT, as everything
    else does: `rsp.attach` bans it in the head's forward, but TRL 1.16's fused kernel reads the head's
    weight and bias without calling its forward, so the ban is given to it as a bias term (added to a real
    bias, which keeps its gradient)."""
    head = output_embeddings(model)
    weight = getattr(head, "weight", None)
    if head is None or not isinstance(weight, torch.Tensor):
        yield
        return
    params = head._parameters
    had, old = "bias" in params, params.get("bias")
    rows = int(getattr(weight, "ds_shape", weight.shape)[0])  # ZeRO-3 keeps the full shape aside
    ban = torch.zeros(rows, dtype=weight.dtype, device=weight.device)
    ban[token_id] = BANNED_LOGIT
    # A plain tensor: bypasses nn.Module's Parameter check (torch types _parameters as Parameter-valued).
    params["bias"] = ban if old is None else old + ban  # type: ignore[assignment]
    try:
        yield
    finally:
        del params["bias"]
        if had:
            params["bias"] = old


class RSPGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` + a fresh RSP per rollout, re-inserted identically in every log-prob pass.

    Same arguments as TRL's `GRPOTrainer`, plus (keyword-only):
        rsp_config: an `rsp.RSPConfig` (length, scale, position, method, statistics options); the
            default `RSPConfig()` is L = 4 after the generation prompt. `length=0` is plain GRPO.
        injection: a ready `rsp.core.injection.Injection` instead of `rsp_config`.
        mask_constant_groups: DAPO dynamic sampling, masking form: groups whose rewards are all equal
            leave the loss and its token count (default False: TRL's own behaviour).
        vllm_engine_kwargs: extra `vllm.LLM(...)` arguments for the colocated engine (TRL has no option
            for them), e.g. `{"enforce_eager": True}`.
        placeholder_id: the token id that marks the L slots in TRL's prompt ids (default:
            `rsp.attach`'s choice, an unused special token); a prompt that contains it is refused.
    """

    def __init__(
        self,
        *args: Any,
        rsp_config=None,
        injection: Injection | None = None,
        mask_constant_groups: bool = False,
        vllm_engine_kwargs: dict | None = None,
        placeholder_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        if rsp_config is not None and injection is not None:
            raise ValueError("pass rsp_config or injection, not both")
        if injection is None:
            rsp_config = (rsp_config or RSPConfig()).validate()
            if get_method(rsp_config.method).injects_nothing(rsp_config):
                injection = NoInjection(rsp_config.position)
        active = injection is None or injection.active
        grpo_args = kwargs["args"] if "args" in kwargs else (args[2] if len(args) > 2 else None)
        colocated = grpo_args is not None and grpo_args.use_vllm and grpo_args.vllm_mode == "colocate"
        with _engine_with_prompt_embeds(vllm_engine_kwargs or {}) if colocated and active else nullcontext():
            super().__init__(*args, **kwargs)
        self.mask_constant_groups = mask_constant_groups
        self.rsp_seed = int(self.args.seed)  # the RSPs' base seed: the run's, as everywhere in rsp
        self._rollout_round = 0
        self._round: tuple[int, int, int] = (0, 0, 0)
        self._pending_seeds: list[int | None] | None = None
        self._scoring_seeds: list[int | None] | None = None
        self._rsp_prompts: list[PromptTokens] = []
        self.rsp: RSPHandle | None = None
        self.rsp_handles: list[RSPHandle] = []
        if injection is not None:  # else built below (`active` is then True)
            self.injection: Injection = injection
        if not active:
            return  # nothing is injected: plain GRPOTrainer, bit for bit
        self._refuse_unsupported()
        model = self.model
        assert model is not None  # Trainer types it Optional (for model_init); GRPOTrainer always sets it
        # beta > 0 without PEFT: TRL's separate reference copy sees the RSP too
        refs = [] if self.ref_model is None else [self.accelerator.unwrap_model(self.ref_model)]
        with _gathered_embeddings(model, *refs):
            lm = wrap_model(model, self.processing_class, name=type(model).__name__, prepare=False)
            if injection is None:
                self.injection = injection = build_method(rsp_config.method, lm, rsp_config)
                if not injection.active:
                    return
            self.rsp = attach(lm, injection=injection, seed=self.rsp_seed, placeholder_id=placeholder_id)
            same: dict[str, Any] = dict(
                injection=injection, seed=self.rsp_seed, placeholder_id=self.rsp.placeholder_id
            )
            self.rsp_handles = [self.rsp] + [attach(ref, self.processing_class, **same) for ref in refs]
        if self.use_vllm:
            self._check_vllm_engine()

    def _refuse_unsupported(self) -> None:
        if self._is_vlm:
            raise NotImplementedError("RSPGRPOTrainer supports text models, not multimodal processors")
        if self.tools or self.environment_factories is not None:
            why = "the multi-turn tool loop would re-generate without the rollout's RSP"
            raise NotImplementedError(f"tools / environment_factory with an RSP: {why}")
        if self.rollout_func is not None:
            why = "the trainer does its own rollouts (use_vllm=True sends the RSP to vLLM)"
            raise ValueError(f"rollout_func with an RSP: {why}; drop rollout_func or use RSPConfig(length=0)")
        if self.use_transformers_continuous_batching:
            raise NotImplementedError(
                "use_transformers_continuous_batching with an RSP: generate_batch does not run the embedding "
                "hook per row; use the default generate or vLLM"
            )

    def _check_vllm_engine(self) -> None:
        gen = self.vllm_generation
        if gen.mode == "colocate" and gen.tensor_parallel_size > 1:
            raise NotImplementedError(
                "vllm_tensor_parallel_size > 1 in colocate mode with an RSP is not implemented; use "
                f"vllm_mode='server' with a tensor-parallel server ({SERVER_COMMAND} "
                "--tensor_parallel_size N)"
            )
        if gen.mode != "colocate" and self.accelerator.is_main_process:
            client = gen.vllm_client
            response = client.session.get(f"{client.base_url}/rsp/info")
            if response.status_code != 200 or not response.json().get("enable_prompt_embeds"):
                raise RuntimeError(
                    f"the vLLM server at {client.base_url} cannot take RSP rollouts: `trl vllm-serve` has no "
                    f"mixed token/embedding prompts over HTTP. Start it with `{SERVER_COMMAND}` (the same "
                    "flags as `trl vllm-serve`), which adds them"
                )

    def _tokenize_prompts(self, prompts: list):
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts)
        if self.rsp is None:
            return prompt_ids, images, multimodal_fields
        self._rsp_prompts = [
            PromptTokens(tuple(int(t) for t in ids), self._user_turn_end(p, ids))
            for p, ids in zip(prompts, prompt_ids, strict=True)
        ]
        pad_id, placeholder_id = self.rsp.lm.pad_token_id, self.rsp.placeholder_id
        batch = layout(self._rsp_prompts, self.injection, pad_id=pad_id, placeholder_id=placeholder_id)
        rows = [
            ids[mask].tolist() for ids, mask in zip(batch.input_ids, batch.attention_mask.bool(), strict=True)
        ]
        return rows, images, multimodal_fields

    def _user_turn_end(self, prompt, ids: Sequence[int]) -> int:
        """End of the last user message in TRL's ids (`end_of_user_turn`); a plain-text prompt (no chat
        template applied by TRL) is all user text, so it ends at the end of the prompt."""
        if self.injection.position != "end_of_user_turn" or not is_conversational({"prompt": prompt}):
            return len(ids)
        # TRL's own call (GRPOTrainer._tokenize_prompts); the casts: multimodal processors were refused,
        # TrainingArguments parses chat_template_kwargs, transformers wants list[dict | Callable] tools.
        tokenizer = cast("PreTrainedTokenizerBase", self.processing_class)
        tools: list[dict | Callable] | None = list(self.tools) if self.tools else None
        text = tokenizer.apply_chat_template(
            conversation=prompt,
            tools=tools,
            chat_template=self.chat_template,
            add_generation_prompt=True,
            tokenize=False,
            **cast(dict, self.chat_template_kwargs),
        )
        return user_turn_offset(tokenizer, cast(str, text), last_user_content(prompt), ids)

    @contextmanager
    def pinned(self, seeds: Sequence[int | None]) -> Iterator[None]:
        """Every forward inside (policy and reference) uses exactly these per-row seeds."""
        with ExitStack() as stack:
            for handle in self.rsp_handles:
                stack.enter_context(handle.use_seeds(seeds))
            yield

    def _generate_single_turn(
        self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False
    ):
        args = (prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        if self.rsp is None:
            return super()._generate_single_turn(*args)
        # fresh seeds keyed by (process, optimizer step, call): distinct on every rank, and a resumed run
        # does not replay the seeds of the steps it already trained on
        self._round = (self.accelerator.process_index, int(self.state.global_step), self._rollout_round)
        self._rollout_round += 1
        seeds = self._pending_seeds = rollout_seeds(
            self.injection, self.rsp_seed, self._round, len(prompt_ids)
        )
        if self.use_vllm:
            return self._vllm_rollouts(seeds)
        with self.pinned(seeds):
            return super()._generate_single_turn(*args)

    def _vllm_rollouts(self, seeds: list[int | None]) -> tuple[list[list[int]], list[list[float]]]:
        """One vLLM request per rollout, mixed layout: the prompt's ids, with the RSP rows at the slots."""
        gen = self.vllm_generation
        # TRL sets _llm_weights_sleeping in colocate mode with sleep mode on
        if getattr(gen, "_llm_weights_sleeping", False) or self.state.global_step != self._last_loaded_step:
            gen.sync_weights()
            self._last_loaded_step = self.state.global_step
        assert self.rsp is not None  # only called for an active RSP (_generate_single_turn)
        decode_seed = derive_seed(self.rsp_seed, "trl-vllm-decode", *self._round)
        rows = (self.rsp.lm, self._rsp_prompts, self.injection, seeds)
        requests = build_requests(*rows, decode_seed=decode_seed, prompt_mode="mixed")
        same = ("repetition_penalty", "temperature", "top_p", "top_k", "logprobs")  # TRL's names are vLLM's
        params: dict[str, Any] = dict(
            n=1,
            min_p=0.0 if gen.min_p is None else gen.min_p,
            max_tokens=gen.max_completion_length,
            logit_bias={self.rsp.placeholder_id: -100.0},  # never sample the placeholder
            **{k: getattr(gen, k) for k in same},
        )
        params.update(gen.generation_kwargs)
        if gen.structured_outputs_regex is not None:  # it takes precedence, as in TRL
            params["structured_outputs"] = {"regex": gen.structured_outputs_regex}
        generate = self._colocate_generate if gen.mode == "colocate" else self._server_generate
        completion_ids, logprobs = generate(requests, params)
        return completion_ids, [[math.nan if x is None else x for x in row] for row in logprobs]

    def _colocate_generate(self, requests, params: dict):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        gen = self.vllm_generation
        if isinstance(params.get("structured_outputs"), dict):
            params = {**params, "structured_outputs": StructuredOutputsParams(**params["structured_outputs"])}
        sampling = [SamplingParams(**{"seed": r.seed, **params}) for r in requests]  # generation_kwargs win
        if gen.enable_sleep_mode:
            gen.llm.wake_up(tags=["kv_cache"])
        outputs = gen.llm.generate([r.as_prompt() for r in requests], sampling, use_tqdm=False)
        if gen.enable_sleep_mode:
            gen.llm.sleep(level=2)
            gen._llm_weights_sleeping = True
        completions = [o.outputs[0] for o in outputs]
        return [list(c.token_ids) for c in completions], [sampled_logprobs(c) for c in completions]

    def _server_generate(self, requests, params: dict):
        gen = self.vllm_generation
        rows = gather_object([encode_request(r) for r in requests])
        if self.accelerator.is_main_process:
            client = gen.vllm_client
            result = client._post(f"{client.base_url}/rsp/generate", json={"rows": rows, "sampling": params})
            payload: list[Any] = [(result["completion_ids"], result["logprobs"])]
        else:
            payload = [None]  # filled by the broadcast from rank 0
        broadcast_object_list(payload, from_process=0)
        completion_ids, logprobs = payload[0]
        start = self.accelerator.process_index * len(requests)
        return completion_ids[start : start + len(requests)], logprobs[start : start + len(requests)]

    def _generate_and_score_completions(self, inputs):
        self._pending_seeds = None
        self._scoring_seeds = None  # old / reference log-probs inside super() score the rows in rollout order
        output = super()._generate_and_score_completions(inputs)
        if self.rsp is not None:  # the seeds _generate_single_turn drew for this batch
            seeds = cast(list, self._pending_seeds)
            device = output["completion_ids"].device
            output["rsp_seeds"] = torch.tensor([-1 if s is None else s for s in seeds], device=device)
        if self.mask_constant_groups:
            self._mask_constant_groups(output)
        return output

    def _mask_constant_groups(self, output: dict) -> None:
        """Dynamic sampling, masking form: groups with all-equal rewards leave the loss and normaliser."""
        adv = output["advantages"]
        if adv.dim() != 1:
            return
        # a group can span ranks (TRL slices the gathered batch per process): decide on the gathered vector
        everything = self.accelerator.gather(adv)
        group_size = cast(int, self.num_generations)  # Optional in TRL's types; GRPOConfig checked it divides
        constant = local_constant_rows(everything, group_size, self.accelerator.process_index, adv.numel())
        mask = output["completion_mask"] = output["completion_mask"] * (~constant).unsqueeze(1).int()
        loss_mask = mask * output["tool_mask"] if "tool_mask" in output else mask
        output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        every_constant = local_constant_rows(everything, group_size, 0, everything.numel())
        kept_groups = 1 - float(every_constant.float().mean())
        # Already global (from the gathered batch); written straight into this step's metrics, because
        # `_log_metric` values are only flushed by the *next* call of `_generate_and_score_completions`.
        training = cast(torch.nn.Module, self.model).training  # Trainer types it Optional, as above
        self._metrics["train" if training else "eval"]["rsp/frac_groups_kept"].append(kept_groups)

    def _compute_loss(self, model, inputs):
        if self.rsp is None:
            return super()._compute_loss(model, inputs)
        self._scoring_seeds = [None if s < 0 else int(s) for s in inputs["rsp_seeds"].tolist()]
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._scoring_seeds = None

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, **kwargs
    ):
        if self.rsp is None:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size, **kwargs
            )
        seeds = self._scoring_seeds if self._scoring_seeds is not None else self._pending_seeds
        n = input_ids.size(0)
        if seeds is None or len(seeds) != n:
            raise RuntimeError("scoring a batch without its RSP seeds would use the wrong (or no) RSP")
        step = batch_size or n
        per_row = {k for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.dim() and v.size(0) == n}
        parts = []
        for i in range(0, n, step):
            rows = slice(i, i + step)  # one pinned forward per chunk, TRL's batch_size
            chunk = {k: v[rows] if k in per_row else v for k, v in kwargs.items()}
            with (
                self.pinned(seeds[rows]),
                banned_in_fused_head(self.accelerator.unwrap_model(model), self.rsp.placeholder_id),
            ):
                score = super()._get_per_token_logps_and_entropies
                parts.append(score(model, input_ids[rows], attention_mask[rows], logits_to_keep, **chunk))
        logps = torch.cat([p[0] for p in parts], dim=0)
        ents = torch.cat([p[1] for p in parts], dim=0) if parts[0][1] is not None else None
        aux = torch.stack([p[2] for p in parts]).mean() if parts[0][2] is not None else None
        return logps, ents, aux


@contextmanager
def _gathered_embeddings(*models: torch.nn.Module) -> Iterator[None]:
    """Inside, the models' embedding tables are whole under DeepSpeed ZeRO-3, which partitions them (the
    statistics need all of a table). Untested: deepspeed is not installed in this project's environments."""
    weights = [input_embeddings(m).weight for m in models]
    if not any(hasattr(w, "ds_id") for w in weights):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(weights):
        yield


def grpo_config(cfg: DAPOConfig, output_dir: str, **overrides):
    """Map the project's DAPOConfig onto TRL's GRPOConfig (DAPO recipe); `overrides` (and `cfg.trl_args`,
    applied last) may set any GRPOConfig field, e.g. bf16, gradient_accumulation_steps, report_to."""
    same = ("epsilon_high", "beta", "temperature", "weight_decay", "max_grad_norm", "seed")  # named alike
    settings: dict[str, Any] = dict(
        output_dir=output_dir,
        loss_type="dapo",
        epsilon=cfg.epsilon_low,
        num_generations=cfg.group_size,
        max_completion_length=cfg.max_new_tokens,
        top_p=1.0,
        top_k=0,
        mask_truncated_completions=cfg.mask_truncated,
        learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.group_size * cfg.prompts_per_step,
        gradient_accumulation_steps=1,
        num_iterations=cfg.updates_per_batch,
        max_steps=cfg.steps,
        use_cpu=cfg.device == "cpu",
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        scale_rewards="group",
        bf16=False,
        **{k: getattr(cfg, k) for k in same},
    )
    settings.update(overrides)
    settings.update(cfg.trl_args)
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(GRPOConfig)})
    if unknown:
        raise DAPOConfigError(f"not GRPOConfig fields: {', '.join(unknown)}")
    return GRPOConfig(**settings)


def completion_text(completion) -> str:
    """A TRL completion as text: a string, or (conversational prompts) a list of one assistant message."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if isinstance(m, dict))


def dapo_reward(cfg: DAPOConfig, correct_fn):
    """TRL reward function: +/- correctness from the project's grader plus DAPO overlong shaping."""

    def reward(prompts, completions, completion_ids, answer, log_metric=None, **_):
        out, correct = [], []
        for completion, ids, gold in zip(completions, completion_ids, answer, strict=True):
            correct.append(bool(correct_fn(completion_text(completion), gold)))
            out.append(shaped_reward(cfg, correct[-1], len(ids)))
        if log_metric is not None and correct:  # TRL averages it over ranks: the native trainer's `accuracy`
            log_metric("accuracy", sum(correct) / len(correct))
        return out

    reward.__name__ = "rsp_dapo_reward"
    return reward


def task_prompt(builder, problem):
    """A task problem as a standard TRL prompt: chat messages where the tokenizer has a chat template
    (`PromptBuilder`'s chat style), else the plain few-shot text; TRL tokenises either itself."""
    if builder.resolved_style == "chat":
        return chat_prompt(problem.question, builder.system_prompt)
    head, tail = builder.render(problem)
    return head + tail


def chat_prompt(question: str, system_prompt: str | None) -> list[dict]:
    """rsp's chat prompt as TRL conversational messages: a system message if given, then the user's."""
    system = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return system + [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}]


def build_trl_trainer(cfg: DAPOConfig, lm, problems, builder, correct_fn, output_dir: str, **overrides):
    """An RSPGRPOTrainer on a standard TRL dataset of `problems` (columns: prompt, answer)."""
    injection = build_injection(lm, cfg)  # statistics from the loaded model's cache, fitted before any update
    rows = [{"prompt": task_prompt(builder, p), "answer": p.answer} for p in problems]
    if not cfg.lora:
        unfreeze_for_training(lm.model)
    return RSPGRPOTrainer(
        model=lm.model,
        reward_funcs=[dapo_reward(cfg, correct_fn)],
        args=grpo_config(cfg, output_dir, **overrides),
        train_dataset=Dataset.from_list(rows),
        processing_class=lm.tokenizer,
        peft_config=cfg.lora_config(),
        injection=injection,
        mask_constant_groups=True,
    )

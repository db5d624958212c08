"""lm-evaluation-harness models that give every request its own Random Soft Prompt: `rsp-hf` (and `rsp-vllm`).

Why a model and not a task: an RSP changes the model's input, not the prompt text, so any lm-eval task
runs with and without RSP by writing `--model rsp-hf` instead of `--model hf`, with lm-eval's own prompts,
filters, metrics and logs (docs/integrations.md). `RSPHFLM` is `HFLM` with `rsp.attach` on its model: the
placeholder ids are laid out by `rsp.core.inputs.layout` inside lm-eval's own tokenisation.

Seeds: the r-th repeat of document d of task T uses `injection.seed_for(seed, key, r)`, key being the
document's `rsp_problem_id` (set by the shipped `rsp_*` tasks: the RSPs are `rsp eval`'s) or else `"T:d"`.
Log-likelihood: one RSP per document and repeat, shared by its requests, so a question's choices are
compared under one perturbed prompt; rolling log-likelihood has no prompt/answer boundary and is refused.
`--log_samples` records each request's RSP seeds as a last element of its `arguments`.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from lm_eval.api.registry import model_registry, register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import has_bos_prefix

from rsp.core.injection import Injection
from rsp.core.inputs import layout
from rsp.core.insert import PromptTokens
from rsp.engines.hook import RSPHandle, attach
from rsp.methods import FLAT_NAMES, InjectionArgs, RSPConfig, get_method, method_names, method_specs
from rsp.models.loading import converted_path
from rsp.renamed import RENAMED, renamed_key
from rsp.tasks.prompts import tokenize_split, user_turn_cut

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"  # the shipped offline task configs
SEED_LOG_KEY = "rsp_seeds"


class RSPArgumentError(ValueError):
    """A bad rsp model argument; the message names it (`rsp lm-eval` prints it without a traceback)."""

    flagless = True  # model_args are not flags: `rsp.config.require` names them alone


@dataclass(frozen=True)
class RSPSettings:
    """The rsp model_args of `rsp-hf` / `rsp-vllm`, validated before any model is loaded: what is injected
    (`config`, the library's `RSPConfig`) and the base seed every request's RSP seed derives from."""

    config: RSPConfig = field(default_factory=RSPConfig)
    seed: int = 0

    @classmethod
    def pop_from(cls, kwargs: dict[str, Any], model: str, *, shared: Sequence[str] = ()) -> RSPSettings:
        """Remove the rsp model_args (docs/glossary.md's flat names, method options by their own) from
        `kwargs`, raising an `RSPArgumentError` naming one that is unknown, renamed or out of range. Names
        in `shared` stay in `kwargs` for the base model too (rsp-vllm: `seed` is also vLLM's seed)."""
        # method options by their own names, except those spelt like a flat setting (rsp-scaled's rsp_scale)
        options_known = {o.key for m in method_specs() for o in m.options or ()} - set(FLAT_NAMES) - {"seed"}
        known = set(FLAT_NAMES) | {"seed"} | options_known
        raw: dict[str, Any] = {}
        for key in list(kwargs):
            # a renamed rsp name is an error; `backend` is HFLM's own argument, not rsp's old `engine`
            renamed = renamed_key(key, "model_arg")
            ours = key.startswith("rsp_") or RENAMED["setting"].get(key) in known
            if renamed and key not in known and ours:
                raise RSPArgumentError(f"{model}: {renamed}")
            if key.startswith("rsp_") or key in known:
                raw[key] = kwargs[key] if key in shared else kwargs.pop(key)
        try:
            unknown = sorted(k for k in raw if k not in known)
            if unknown:
                accepted = ", ".join(sorted(known))
                raise RSPArgumentError(
                    f"unknown model_args {', '.join(unknown)}; rsp arguments are {accepted}"
                )
            flat = {k: raw[k] for k in FLAT_NAMES if k in raw and k != "method"}
            if "rsp_length" in flat:
                flat["rsp_length"] = _integer(flat["rsp_length"], "rsp_length")
            try:
                flat["rsp_scale"] = float(flat.get("rsp_scale", 1.0))
            except (TypeError, ValueError):
                raise RSPArgumentError(f"rsp_scale must be a number, got {raw['rsp_scale']!r}") from None
            options = {key: value for key, value in raw.items() if key in options_known}
            args = InjectionArgs(**flat, method_options=options)
            args.validate_injection(RSPArgumentError)
            method, names = str(raw.get("method", "rsp")), method_names()
            if method not in names:
                raise RSPArgumentError(f"method {method!r} is unknown; known: {', '.join(names)}")
            for missing in get_method(method).missing_options(options):
                raise RSPArgumentError(f"method={method} needs {missing.key}={missing.metavar}")
            return cls(args.rsp_config(method), _integer(raw.get("seed", 0), "seed"))
        except RSPArgumentError as exc:
            raise RSPArgumentError(f"{model}: {exc}") from None

    @property
    def trivially_off(self) -> bool:
        """Settings under which nothing can be injected, so no hook is attached at all."""
        return get_method(self.config.method).injects_nothing(self.config)

    def info(self) -> dict[str, Any]:
        """The settings as flat model_args (`rsp_length`, ..., `method`, `seed`, method options)."""
        flat = {key: getattr(self.config, name) for key, name in FLAT_NAMES.items()}
        return flat | {"seed": self.seed, **self.config.method_options}


def _integer(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or (isinstance(value, float) and number != value):
        raise RSPArgumentError(f"{name} must be an integer, got {value!r}")
    return number


def problem_key(request: Any) -> str:
    """The identity a request's RSP seed is derived from (see the module docstring)."""
    doc = getattr(request, "doc", None)
    pid = doc.get("rsp_problem_id") if isinstance(doc, dict) else None
    if pid is not None:
        return str(pid)
    return f"{getattr(request, 'task_name', None)}:{getattr(request, 'doc_id', None)}"


def request_seeds(requests: Sequence[Any], injection: Injection, base_seed: int) -> list[int | None]:
    """One seed per entry of lm-eval's request list. lm-eval passes a `repeats: N` request N times (the
    same object): the k-th occurrence is repeat k."""
    seen: dict[int, int] = {}
    seeds = []
    for req in requests:
        repeat = seen.get(id(req), 0)
        seen[id(req)] = repeat + 1
        seeds.append(injection.seed_for(base_seed, problem_key(req), repeat))
    return seeds


def log_seeds(
    requests: Sequence[Any], seeds: Sequence[int | None], settings: RSPSettings, injection: Injection
) -> None:
    """Append `{"rsp_seeds": [...], ...}` to each request's arguments, which `--log_samples` writes out
    (after the model has run, so batching and caching never see it)."""
    per_request: dict[int, tuple[Any, list[int | None]]] = {}
    for req, seed in zip(requests, seeds, strict=True):
        per_request.setdefault(id(req), (req, []))[1].append(seed)
    info = {
        "method": settings.config.method,
        "rsp_length": injection.length,
        "rsp_position": injection.position,
        "rsp_scale": settings.config.scale,
        "seed": settings.seed,
    }
    for req, req_seeds in per_request.values():  # a request run again: its log replaced, never stacked
        req.arguments = (*request_args(req), {SEED_LOG_KEY: req_seeds, **info})


class _SeededText(str):
    """A request's context that remembers its RSP seed through lm-eval's sorting and batching."""

    rsp_seed: int | None

    def __new__(cls, text: str, seed: int | None) -> _SeededText:
        obj = super().__new__(cls, text)
        obj.rsp_seed = seed
        return obj


@dataclass
class _Request:
    """The part of an lm-eval `Instance` that the model's request methods read."""

    args: tuple
    task_name: str | None = None


def request_args(req: Any) -> tuple:
    """A request's arguments without the seed log a previous run appended (an `Instance` run twice)."""
    args = tuple(req.args)
    return args[:-1] if args and isinstance(args[-1], dict) and SEED_LOG_KEY in args[-1] else args


def seeded_requests(requests: Sequence[Any], seeds: Sequence[int | None]) -> list[_Request]:
    """The requests with contexts that carry their RSP seeds (generation)."""
    out = []
    for req, seed in zip(requests, seeds, strict=True):
        context, *rest = request_args(req)
        out.append(_Request((_SeededText(context, seed), *rest), getattr(req, "task_name", None)))
    return out


class RSPRequestsMixin:
    """What `rsp-hf` and `rsp-vllm` share on top of their lm-eval base class: the chat prompt's user-turn
    cut is remembered, and each generation request is sent with, and logged with, its own RSP seed."""

    rsp_injection: Any  # the active Injection, None when nothing is injected
    rsp_settings: RSPSettings
    _user_turn_cuts: dict

    @property
    def injecting(self) -> bool:
        return self.rsp_injection is not None

    def _user_turn_end(self, text: str, n_ids: int, encode: Callable[[str], Sequence[int]]) -> int:
        """Where the user's turn ends in lm-eval's `n_ids` tokens of `text`: at the cut lm-eval's chat
        template left (`end_of_user_turn`), else at the end, as in `tokenize_prompt`."""
        cut = self._user_turn_cuts.get(text) if self.rsp_injection.position == "end_of_user_turn" else None
        return n_ids if cut is None else min(n_ids, len(encode(text[:cut])))

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        text = super().apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)  # type: ignore[misc]
        if self.injecting:
            cut = user_turn_cut(text, chat_history)
            if cut is not None:
                self._user_turn_cuts[text] = cut
        return text

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        if not self.injecting:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)  # type: ignore[misc]
        seeds = request_seeds(requests, self.rsp_injection, self.rsp_settings.seed)
        out = super().generate_until(seeded_requests(requests, seeds), disable_tqdm=disable_tqdm)  # type: ignore[misc]
        log_seeds(requests, seeds, self.rsp_settings, self.rsp_injection)
        return out


@register_model("rsp-hf")
class RSPHFLM(RSPRequestsMixin, HFLM):
    """lm-eval's `HFLM` with a Random Soft Prompt per request (`--model rsp-hf`).

    Model arguments: every `HFLM` argument, plus `rsp_length` [4], `seed` [0] (the base seed), `rsp_scale`,
    `rsp_position`, `method`, `rsp_stats_rows`, `rsp_stats_mean` and method options by their own names
    (docs/integrations.md). `pretrained` also takes rsp's packaged names and `.gguf` files.
    """

    def __init__(self, pretrained: Any = "smollm2-135m-instruct", **kwargs: Any) -> None:
        settings = RSPSettings.pop_from(kwargs, "rsp-hf")  # fail on bad rsp arguments before loading
        super().__init__(pretrained=converted_path(pretrained), **kwargs)
        self.rsp_settings = settings
        self.rsp_handle: RSPHandle | None = None
        self.rsp_injection = None
        self._user_turn_cuts: dict[str, int] = {}
        self._batch_seeds: list[int | None] | None = None
        self._ll_seeds: list[int | None] | None = None
        self._ll_queue: deque[tuple[list[int], int | None]] | None = None
        if settings.trivially_off:
            return
        options = dataclasses.asdict(settings.config)
        handle = attach(
            self.model, self.tokenizer, **options.pop("method_options"), **options, seed=settings.seed
        )
        if not handle.injection.active:
            handle.detach()
            return
        if self.backend != "causal":
            handle.detach()
            raise ValueError("rsp-hf injects into decoder-only (causal) models only; this one is seq2seq")
        self.rsp_handle, self.rsp_injection = handle, handle.injection

    def _layout(self, prompts: Sequence[PromptTokens]):
        handle = cast(RSPHandle, self.rsp_handle)
        pad = self.tokenizer.pad_token_id
        pad_id = int(pad) if pad is not None else handle.lm.pad_token_id
        return layout(prompts, self.rsp_injection, pad_id=pad_id, placeholder_id=handle.placeholder_id)

    def _prompt_tokens(self, text: str, add_special_tokens: bool) -> PromptTokens:
        """lm-eval's tokenisation of one context, with the end of the user's turn marked (chat prompts
        rendered by lm-eval; otherwise the whole context is the user's text, as in `tokenize_prompt`)."""
        cut = self._user_turn_cuts.get(text) if self.rsp_injection.position == "end_of_user_turn" else None
        head, tail = (text, "") if cut is None else (text[:cut], text[cut:])
        return tokenize_split(self.tokenizer, head, tail, add_special_tokens=add_special_tokens)

    def tok_batch_encode(
        self,
        strings: list[str],
        padding_side: str = "left",
        left_truncate_len: int | None = None,
        truncation: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.injecting or not strings or not all(isinstance(s, _SeededText) for s in strings):
            return super().tok_batch_encode(
                strings, padding_side=padding_side, left_truncate_len=left_truncate_len, truncation=truncation
            )
        if padding_side != "left":
            raise ValueError("rsp-hf lays generation prompts out left-padded only")
        # the same special-token rule as HFLM.tok_batch_encode
        bos = has_bos_prefix(strings[0], getattr(self.tokenizer, "bos_token", None))
        add_special = not bos and (self.add_bos_token is None or bool(self.add_bos_token))
        prompts = [self._prompt_tokens(str(s), add_special) for s in strings]
        if left_truncate_len:  # keep the last tokens, leaving room for the slots
            keep = max(1, left_truncate_len - self.rsp_injection.length)
            cuts = [max(0, len(p.ids) - keep) for p in prompts]
            prompts = [
                PromptTokens(p.ids[c:], max(0, p.user_turn_end - c))
                for p, c in zip(prompts, cuts, strict=True)
            ]
        batch = self._layout(prompts)
        self._batch_seeds = [cast(_SeededText, s).rsp_seed for s in strings]
        return batch.input_ids, batch.attention_mask

    def _model_generate(
        self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any
    ):
        seeds, self._batch_seeds = self._batch_seeds, None
        if not self.injecting or seeds is None:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        if len(seeds) != context.shape[0]:
            raise RuntimeError(f"rsp-hf: {context.shape[0]} prompt rows but {len(seeds)} RSP seeds")
        with self.rsp_handle.use_seeds(seeds):  # type: ignore[union-attr]
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if not self.injecting:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        seeds = request_seeds(requests, self.rsp_injection, self.rsp_settings.seed)
        self._ll_seeds = seeds
        try:
            plain = [_Request(request_args(r), getattr(r, "task_name", None)) for r in requests]
            out = super().loglikelihood(plain, disable_tqdm=disable_tqdm)
        finally:
            self._ll_seeds = None
        log_seeds(requests, seeds, self.rsp_settings, self.rsp_injection)
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        if self.injecting:
            raise NotImplementedError(
                "rsp-hf: rolling log-likelihood (perplexity tasks) has no prompt/answer boundary to insert "
                "an RSP at; run such tasks with rsp_length=0 or --model hf"
            )
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(
        self, requests: list, disable_tqdm: bool = False, override_bs: int | None = None
    ):
        seeds, self._ll_seeds = self._ll_seeds, None
        if not self.injecting or seeds is None:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        if len(seeds) != len(requests):
            raise RuntimeError(f"rsp-hf: {len(requests)} scoring requests but {len(seeds)} RSP seeds")
        slotted = [(strs, self._slot_context(strs[0], ctx), cont) for strs, ctx, cont in requests]
        # HFLM scores them sorted by (-length, tokens), stably, in batches (logits cache off): queue each
        # row's seed in that order; _model_call checks every row against its queued tokens.
        full = [ctx + cont for _, ctx, cont in slotted]
        order = sorted(range(len(full)), key=lambda i: (-len(full[i]), tuple(full[i])))
        self._ll_queue = deque((full[i][-(self.max_length + 1) :][:-1], seeds[i]) for i in order)
        cache: bool = self.logits_cache  # type: ignore[has-type]
        self.logits_cache = False
        try:
            score = super()._loglikelihood_tokens
            result = score(slotted, disable_tqdm=disable_tqdm, override_bs=override_bs)
            if self._ll_queue:
                raise RuntimeError(f"rsp-hf: {len(self._ll_queue)} scoring rows were never run")
        finally:
            self.logits_cache = cache
            self._ll_queue = None
        return result

    def _slot_context(self, context: str, context_enc: list[int]) -> list[int]:
        """The context's token ids with the L placeholder ids at the insertion point (via `layout`)."""
        end = self._user_turn_end(context, len(context_enc), self.tok_encode)
        batch = self._layout([PromptTokens(ids=tuple(context_enc), user_turn_end=end)])
        return batch.input_ids[0].tolist()

    def _model_call(
        self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        queue = self._ll_queue
        if queue is None:
            return super()._model_call(inps, attn_mask, labels)
        seeds = []
        for row in inps.tolist():
            if not queue:
                raise RuntimeError("rsp-hf: more scoring rows than requests")
            expected, seed = queue.popleft()
            if row[: len(expected)] != expected:
                why = "lm-eval scored the log-likelihood requests in an order this version does not expect"
                raise RuntimeError(f"rsp-hf: {why}, so rows cannot be matched to their RSP seeds")
            seeds.append(seed)
        with self.rsp_handle.use_seeds(seeds):  # type: ignore[union-attr]
            return super()._model_call(inps, attn_mask, labels)

    def _detect_batch_size(self, requests=None, pos: int = 0):
        queue, self._ll_queue = self._ll_queue, None  # probe forwards are not requests
        try:
            return super()._detect_batch_size(requests, pos)
        finally:
            self._ll_queue = queue

    def get_model_info(self) -> dict:
        rsp = self.rsp_settings.info() | {"injecting": self.injecting}
        if self.rsp_handle is not None:
            rsp |= {"rsp_length": self.rsp_injection.length, "rsp_position": self.rsp_injection.position}
            rsp["placeholder_id"] = self.rsp_handle.placeholder_id
        return super().get_model_info() | {"rsp": rsp}


# `rsp-vllm` is registered lazily, so vLLM is imported only when that model is asked for
if "rsp-vllm" not in model_registry:
    model_registry.register("rsp-vllm", target="rsp.integrations.lm_eval_vllm:RSPVLLM")

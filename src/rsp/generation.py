"""`rsp.generate`: n attempts per prompt, each with its own Random Soft Prompt, on any engine.

    import rsp
    outs = rsp.generate("smollm2-135m-instruct", ["What is 2 + 3?"], n=16, rsp=rsp.RSPConfig(length=4),
                        temperature=0.7, max_new_tokens=64, seed=0)
    outs[0].samples[3].text, outs[0].samples[3].rsp_seed

Shaped like vLLM's `LLM.generate(prompts, SamplingParams(n=16, seed=0))`, but every one of the n attempts
is its own batch row with its own injected vectors (never transformers' `num_return_sequences` or vLLM's
`n`, which would share one RSP). `Generator` keeps a loaded model and engine for repeated calls (`rsp eval`,
`rsp sweep` and `rsp serve` use one).

Seeds: attempt `a` of the prompt with key `k` (its index, or the `keys` you pass, e.g. problem ids) uses
the method's own `seed_for(seed, k, a)`; each batch decodes with `derive_seed(seed, "decode", method,
group, chunk)`, batches being fixed by (number of prompts, n, batch_size). This is `rsp eval`'s scheme
(`Generator.run_batches` runs both), so `rsp.generate` with a task's prompts and problem ids reproduces an
eval run's samples.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from rsp.core.injection import Injection, NoInjection
from rsp.core.insert import PromptTokens
from rsp.core.seeds import derive_seed
from rsp.engines import ENGINE_NAMES, Completion, SamplingConfig, create_engine, load_for_engine
from rsp.methods import RSPConfig, build_method  # RSPConfig lives with the methods; public here too
from rsp.models.loading import ModelBase, wrap_model
from rsp.tasks.prompts import Messages, is_messages, tokenize_prompt

Prompt = str | Messages | PromptTokens
DEFAULT_RSP = RSPConfig()  # what `rsp.generate` injects unless told otherwise (L = 4 after the prompt)


@dataclass(frozen=True)
class Sample:
    """One attempt: its text and tokens, why it ended, and the seeds that rebuild it."""

    attempt: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" (EOS / stop string) or "length"
    rsp_seed: int | None  # rebuilds the injected vectors (`handle.rows([seed])`, `injection.rows([seed])`)
    decode_seed: int  # the batch's decoding seed (sampling is reproduced with the same batch composition)


@dataclass
class GenerationOutput:
    """The n samples of one prompt."""

    prompt: Any
    key: str
    prompt_token_ids: tuple[int, ...]
    samples: list[Sample]

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.samples]


@dataclass(frozen=True)
class WorkBatch:
    """One engine call: a method, its prompt group and chunk, and the (prompt index, attempt) rows."""

    method: str
    group: int
    chunk: int
    rows: tuple[tuple[int, int], ...]


def plan_batches(num_prompts: int, n: int, methods: Sequence[str], batch_size: int) -> list[WorkBatch]:
    """Deterministic batches: prompts in groups of about batch_size / n, each method in turn per group, so
    a run stopped early has paired data for every method on the prompts it finished."""
    per_group = max(1, batch_size // n)
    batches: list[WorkBatch] = []
    for group, start in enumerate(range(0, num_prompts, per_group)):
        rows = [(p, a) for p in range(start, min(start + per_group, num_prompts)) for a in range(n)]
        for method in methods:
            for chunk, c0 in enumerate(range(0, len(rows), batch_size)):
                batches.append(WorkBatch(method, group, chunk, tuple(rows[c0 : c0 + batch_size])))
    return batches


def decode_seed_for(seed: int, batch: WorkBatch, *, common: bool = False) -> int:
    """The decoding seed of a planned batch. `common` (common random numbers, `rsp eval`'s default) leaves
    the method out, so every method's batch of the same prompts samples from the same random stream and the
    noise common to both arms cancels in a paired comparison."""
    if common:
        return derive_seed(seed, "decode", batch.group, batch.chunk)
    return derive_seed(seed, "decode", batch.method, batch.group, batch.chunk)


class Generator:
    """A loaded model and one engine, reused across calls (`rsp eval`, `rsp sweep`, `rsp serve`).

    `model`: a packaged name, Hub id, local folder, `.gguf` file, `(model, tokenizer)` pair or rsp model.
    `engine`: `hf`, `lean`, `prefix` or `vllm` (which loads only the tokenizer and embedding table here);
    `engine_options` go to the engine (vLLM: `tensor_parallel_size`, ...)."""

    def __init__(
        self,
        model: Any = "smollm2-135m-instruct",
        *,
        engine: str = "hf",
        dtype: str = "auto",
        device: str = "cpu",
        **engine_options: Any,
    ) -> None:
        if engine not in ENGINE_NAMES:
            raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINE_NAMES)}")
        if isinstance(model, str):
            model = load_for_engine(model, engine, dtype=dtype, device=device)
        elif isinstance(model, tuple) and len(model) == 2:
            model = wrap_model(model[0], model[1], name=type(model[0]).__name__)
        elif not isinstance(model, ModelBase):
            kinds = "a name or path, a (model, tokenizer) pair, or a LoadedModel"
            raise TypeError(f"model must be {kinds}; got {type(model).__name__}")
        self.lm: ModelBase = model
        self.engine_name = engine
        self.engine = create_engine(engine, self.lm, **engine_options)
        self._injections: dict[tuple, Injection] = {}

    @classmethod
    def from_args(cls, args: Any, model: Any = None) -> Generator:
        """The generator a command's `EngineArgs` describe (`model`: an already loaded one instead)."""
        where = {k: getattr(args, k) for k in ("engine", "dtype", "device")}
        return cls(args.model if model is None else model, **where, **args.engine_options())

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    def injection(self, rsp: RSPConfig | None) -> Injection:
        """The injection for `rsp` (None or length 0 with the `rsp` method: plain sampling), built once."""
        if rsp is None:
            return NoInjection()
        key = rsp.key()
        if key not in self._injections:
            rsp.validate()
            self._injections[key] = build_method(rsp.method, self.lm, rsp)
        return self._injections[key]

    def tokenize(self, prompt: Prompt, *, chat: bool | None = None) -> PromptTokens:
        return tokenize_prompt(self.lm.tokenizer, prompt, chat=chat)

    def check_context(
        self, prompts: Sequence[PromptTokens], injection: Injection, max_new_tokens: int
    ) -> None:
        """Refuse before sampling when prompt + injected vectors + new tokens exceed the context."""
        limit = self.lm.context_length
        if limit is None or not prompts:
            return
        longest = max(len(p.ids) for p in prompts) + injection.length + max_new_tokens
        if longest > limit:
            raise ValueError(
                f"longest prompt + {injection.length} injected vectors ({injection.name}) + "
                f"max_new_tokens = {longest} exceeds the model's context of {limit} tokens"
            )

    def run(
        self,
        prompts: Sequence[PromptTokens],
        injection: Injection,
        seeds: Sequence[int | None],
        sampling: SamplingConfig,
        *,
        decode_seed: int,
        stop_strings: Sequence[str] = (),
    ) -> list[Completion]:
        """One batch: row i is prompts[i] with the injection drawn from seeds[i]."""
        return self.engine.generate(
            prompts, injection, seeds, sampling, decode_seed=decode_seed, stop_strings=stop_strings
        )

    def run_batches(
        self,
        batches: Sequence[WorkBatch],
        prompts: Sequence[PromptTokens],
        keys: Sequence[str],
        injections: Mapping[str, Injection],
        sampling: SamplingConfig,
        *,
        seed: int,
        stop: Sequence[str] = (),
        common_random_numbers: bool = False,
    ) -> Iterator[tuple[WorkBatch, int, list[int | None], list[Completion]]]:
        """Run planned batches (`rsp.generate` and `rsp eval`): row (p, a) is prompts[p] with its method's
        injection drawn from `seed_for(seed, keys[p], a)`. Yields each batch with its decode seed, its
        rows' RSP seeds and their completions."""
        for batch in batches:
            injection = injections[batch.method]
            seeds = [injection.seed_for(seed, keys[p], a) for p, a in batch.rows]
            decode_seed = decode_seed_for(seed, batch, common=common_random_numbers)
            rows = [prompts[p] for p, _ in batch.rows]
            done = self.run(rows, injection, seeds, sampling, decode_seed=decode_seed, stop_strings=stop)
            yield batch, decode_seed, seeds, done

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        *,
        n: int = 1,
        rsp: RSPConfig | None = DEFAULT_RSP,
        temperature: float = 0.7,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        max_new_tokens: int = 256,
        seed: int = 0,
        stop: Sequence[str] = (),
        batch_size: int = 32,
        keys: Sequence[str] | None = None,
        chat: bool | None = None,
        progress: bool = False,
        common_random_numbers: bool = False,
    ) -> list[GenerationOutput]:
        """n completions per prompt; see the module docstring for the seeds. Temperature 0 is greedy.
        `common_random_numbers`: see `decode_seed_for`."""
        if isinstance(prompts, str | PromptTokens) or is_messages(prompts):
            prompts = [prompts]
        prompts = list(prompts)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if keys is not None and len(keys) != len(prompts):
            raise ValueError(f"{len(keys)} keys for {len(prompts)} prompts")
        keys = [str(k) for k in keys] if keys is not None else [str(i) for i in range(len(prompts))]
        sampling = SamplingConfig(temperature, top_p, top_k, min_p, max_new_tokens)
        sampling.validate()
        injection = self.injection(rsp)
        tokens = [self.tokenize(p, chat=chat) for p in prompts]
        self.check_context(tokens, injection, max_new_tokens)
        samples: list[list[Sample]] = [[] for _ in prompts]
        batches = plan_batches(len(prompts), n, [injection.name], batch_size)
        bar = tqdm(total=len(prompts) * n, disable=not progress, unit="attempt", desc="generate")
        for batch, decode_seed, seeds, done in self.run_batches(
            batches,
            tokens,
            keys,
            {injection.name: injection},
            sampling,
            seed=seed,
            stop=stop,
            common_random_numbers=common_random_numbers,
        ):
            for (p, a), s, c in zip(batch.rows, seeds, done, strict=True):
                samples[p].append(Sample(a, c.text, c.token_ids, c.finish_reason, s, decode_seed))
            bar.update(len(batch.rows))
        bar.close()
        return [
            GenerationOutput(prompt, key, tok.ids, row)
            for prompt, key, tok, row in zip(prompts, keys, tokens, samples, strict=True)
        ]


def generate(
    model: Any,
    prompts: Prompt | Sequence[Prompt],
    *,
    engine: str = "hf",
    dtype: str = "auto",
    device: str = "cpu",
    **options: Any,
) -> list[GenerationOutput]:
    """Per prompt, `n` completions each carrying its own RSP (`rsp=None`: plain sampling); `options` are
    `Generator.generate`'s (`n`, `rsp`, `temperature`, `seed`, `keys`, ...) and the engine's. `model` may
    also be a `Generator`, reused as is. Prompts are strings (with the chat template where there is one;
    `chat=False` sends them raw), chat message lists, or `PromptTokens`."""
    names = set(inspect.signature(Generator.generate).parameters) - {"self", "prompts"}
    engine_options = {k: options.pop(k) for k in list(options) if k not in names}
    if not isinstance(model, Generator):
        model = Generator(model, engine=engine, dtype=dtype, device=device, **engine_options)
    return model.generate(prompts, **options)

"""Load a causal LM from a packaged name, a GGUF file, a local directory or a Hugging Face id.

GGUF files are dequantised once and cached as plain safetensors, because dequantising on every
load costs 12-50 s while loading the cache takes about a second.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from rsp.core.stats import EmbeddingStats, MeanMode, RowSelection, fit_embedding_stats
from rsp.models.gguf_tokenizer import TOKENIZER_FORMAT, read_gguf_vocab, tokenizer_from_gguf
from rsp.models.packaged import PACKAGED_MODELS, locate_packaged_gguf

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPES |= {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # the short names
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>", "<|end|>")


class ModelLoadError(ValueError):
    """A model could not be found, read or used for RSP injection."""


def input_embeddings(model: torch.nn.Module) -> torch.nn.Embedding:
    """`model.get_input_embeddings()`, typed as the lookup table it is (transformers says `nn.Module`)."""
    get = cast("Callable[[], torch.nn.Embedding]", model.get_input_embeddings)
    return get()


def output_embeddings(model: torch.nn.Module) -> torch.nn.Module | None:
    """`model.get_output_embeddings()` (the LM head), or None for a model without that method or head."""
    get = getattr(model, "get_output_embeddings", None)
    return get() if get is not None else None


def default_cache_dir() -> Path:
    if os.environ.get("RSP_CACHE_DIR"):
        return Path(os.environ["RSP_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rsp"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available on this machine")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ModelLoadError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")
    return torch.device(device)


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16_flags(cpuinfo: str | None = None) -> list[str] | None:
    """The `NATIVE_BF16_FLAGS` among an x86 CPU's flags in /proc/cpuinfo (or `cpuinfo`, text in its format);
    None where there is no flags line (not Linux, or not x86)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return [f for f in NATIVE_BF16_FLAGS if f in value.split()]
    return None


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX). Without them, oneDNN still reports
    bf16 support on AVX-512 CPUs but emulates it: SmolLM2 in bf16 ran 4x slower per attempt than in fp32
    (benchmarks/cpu_dtype.py). Without flags to read, oneDNN's answer stands."""
    native = native_bf16_flags(cpuinfo)
    if native is not None:
        return bool(native)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True  # unknown: say nothing


def warn_if_slow_bf16(torch_dtype: torch.dtype, device: torch.device) -> bool:
    """Log once per process that bf16 on this CPU is emulated and fp32 would be faster; True if it did."""
    global _WARNED_BF16
    if torch_dtype != torch.bfloat16 or device.type != "cpu" or cpu_has_native_bf16() or _WARNED_BF16:
        return False
    _WARNED_BF16 = True
    log.warning(
        "this CPU has no native bf16 (%s): bf16 runs emulated, about 4x slower per attempt than "
        "--dtype float32 here (benchmarks/cpu_dtype.py). --dtype auto stays bf16 so that results match "
        "other machines' dtype; pass --dtype float32 for speed.",
        torch.backends.cpu.get_cpu_capability(),
    )
    return True


_WARNED_BF16 = False


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(sorted(DTYPES))}")
    return DTYPES[dtype]


@dataclass(kw_only=True)
class ModelBase(ABC):
    """What RSP injection needs of a model, however it was loaded: the tokenizer, the stop, pad and
    placeholder ids, the effective embedding lookup (`embed`) and its statistics (`embedding_stats`).
    `LoadedModel` holds the whole transformers model; `EmbeddingModel` (`rsp.models.embeddings`) only the
    input-embedding table, for an engine that loads the weights itself (vLLM). Engines take either."""

    tokenizer: PreTrainedTokenizerBase
    name: str
    source: str
    stop_token_ids: tuple[int, ...]
    pad_token_id: int
    config: Any  # the transformers config
    location: str | None = None  # the folder (or Hub id) the weights came from; None for wrapped models
    stats_cache_dir: Path | None = None  # converted models keep their fitted statistics here

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype: ...

    @property
    @abstractmethod
    def embed_scale(self) -> float:
        """The factor between the embedding table and what the first block receives (Gemma: ~sqrt(d))."""

    @abstractmethod
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Effective input embeddings (with any model-specific scale) for token ids."""

    @abstractmethod
    def embedding_table(self) -> torch.Tensor:
        """The raw (V, d) input-embedding table the statistics are fitted on."""

    @property
    def hidden_size(self) -> int:
        return int(self.embedding_table().shape[1])

    @property
    def vocab_rows(self) -> int:
        return int(self.embedding_table().shape[0])

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def context_length(self) -> int | None:
        return getattr(self.config, "max_position_embeddings", None)

    @functools.cached_property
    def placeholder_id(self) -> int:
        """The token id that marks injection slots in token-id inputs (`choose_placeholder`); engines never
        sample it, so every engine bans the same id."""
        return choose_placeholder(self.tokenizer, self.vocab_rows, self.stop_token_ids)

    @functools.cached_property
    def _stats(self) -> dict[tuple[str, str], EmbeddingStats]:
        return {}

    def embedding_stats(self, rows: RowSelection = "all", mean_mode: MeanMode = "scalar") -> EmbeddingStats:
        """The RSP distribution, fitted once, then cached in memory and (converted models) on disk."""
        if (rows, mean_mode) not in self._stats:
            self._stats[rows, mean_mode] = cached_stats(
                self.stats_cache_dir,
                rows,
                mean_mode,
                lambda: fit_embedding_stats(
                    self.embedding_table(),
                    embed_scale=self.embed_scale,
                    rows=rows,
                    num_real_tokens=len(self.tokenizer),
                    mean_mode=mean_mode,
                ),
            )
        return self._stats[rows, mean_mode]


@dataclass(kw_only=True)
class LoadedModel(ModelBase):
    """A transformers model with its tokenizer and the facts RSP injection needs about its embeddings."""

    model: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @functools.cached_property
    def embed_scale(self) -> float:
        emb = input_embeddings(self.model)
        return probe_embed_scale(emb.weight, emb)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_embeddings(self.model)(input_ids.to(self.device))

    def embedding_table(self) -> torch.Tensor:
        return input_embeddings(self.model).weight


def cached_stats(
    stats_cache_dir: Path | None, rows: str, mean_mode: str, fit: Callable[[], EmbeddingStats]
) -> EmbeddingStats:
    """Statistics from a converted model's on-disk cache, else `fit()` (saved there when there is one)."""
    path = stats_cache_path(stats_cache_dir, rows, mean_mode) if stats_cache_dir else None
    if path is not None and path.is_file():
        return EmbeddingStats.load(path)
    stats = fit()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            stats.save(tmp)
            os.replace(tmp, path)
        except OSError as exc:  # a read-only cache only costs a refit next time
            log.warning("could not cache embedding stats at %s: %s", path, exc)
    return stats


def stats_dir(location: str, source: str) -> Path | None:
    """Where a model keeps its fitted statistics: the folder rsp converted it into, else nowhere."""
    return Path(location) if source.startswith(("packaged:", "gguf:")) else None


def pad_id(tokenizer) -> int:
    """The pad id, else EOS, else 0."""
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else (tokenizer.eos_token_id or 0))


def choose_placeholder(tokenizer, vocab_rows: int, stop_ids: Sequence[int] = ()) -> int:
    """A token id to mark the slots with, one that neither ordinary text nor the chat template produces:
    the highest added special token that is not BOS/EOS/PAD/UNK, a stop token or in the chat template
    (SmolLM2: `<empty_output>`, Gemma: an `<unusedN>`); else the unknown token, if not a stop or padding
    token; else the last id. Its row is always overwritten, and it is never sampled."""
    reserved = {
        getattr(tokenizer, a, None) for a in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
    } | set(stop_ids)
    template = str(getattr(tokenizer, "chat_template", "") or "")
    added = getattr(tokenizer, "get_added_vocab", None)
    if callable(added):
        free = [
            i for tok, i in added().items() if i not in reserved and i < vocab_rows and tok not in template
        ]
        if free:
            return int(max(free))
    unk = getattr(tokenizer, "unk_token_id", None)
    taken = {*stop_ids, getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "bos_token_id", None)}
    if isinstance(unk, int) and unk not in taken:
        return unk
    return int(min(len(tokenizer), vocab_rows) - 1)


def stats_cache_path(model_dir: Path, rows: str, mean_mode: str) -> Path:
    """Where a converted model's fitted statistics live: in a subfolder, because engines such as vLLM load
    every top-level ``*.safetensors`` as a weight shard. A file at the old top-level place is moved in."""
    path = model_dir / "rsp-stats" / f"{rows}-{mean_mode}.safetensors"
    legacy = model_dir / f"rsp-stats-{rows}-{mean_mode}.safetensors"
    if legacy.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(legacy, path)
        except OSError as exc:
            log.warning("could not move %s out of the weights folder: %s", legacy, exc)
    return path


def probe_embed_scale(weight: torch.Tensor, lookup: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """The factor between a table and what its lookup returns (Gemma: ~sqrt(d)), from its first 64 rows.
    Probing the lookup, not a model-specific attribute, works for any scaled-lookup embedding, catches one
    that is not, and gives a table read without the model (`rsp.models.embeddings`) the same number."""
    ids = torch.arange(min(64, weight.shape[0]), device=weight.device)
    with torch.no_grad():
        out = lookup(ids).float().detach()
        raw = weight[ids].float().detach()
    denom = float((raw * raw).sum())
    if denom == 0.0:
        return 1.0
    scale = float((out * raw).sum()) / denom
    if not torch.allclose(out, raw * scale, rtol=2e-2, atol=1e-3 * max(1.0, abs(scale))):
        raise ModelLoadError(
            "the input-embedding module is not a (scaled) table lookup; RSP statistics cannot be fitted"
        )
    return 1.0 if abs(scale - 1.0) < 1e-3 else scale


def check_inputs_embeds_support(model: torch.nn.Module) -> None:
    params = inspect.signature(model.forward).parameters
    if "inputs_embeds" not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        raise ModelLoadError(
            f"{type(model).__name__}.forward does not accept inputs_embeds, "
            "so RSPs cannot be injected into it"
        )
    prep = getattr(model, "prepare_inputs_for_generation", None)
    if prep is not None and "inputs_embeds" not in inspect.signature(prep).parameters:
        raise ModelLoadError(f"{type(model).__name__} cannot generate from inputs_embeds")


def stop_token_ids_from(gen_eos: int | list[int] | None, tokenizer) -> tuple[int, ...]:
    """Every id that ends an answer: EOS from the generation config (`gen_eos`) and the tokenizer, plus
    end-of-turn tokens."""
    ids: set[int] = set()
    for value in (gen_eos, getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return tuple(sorted(ids))


TOKENIZER_MARKER = "rsp-tokenizer-from-gguf.json"
PROBE_TEXTS = (
    "Hello world! 12 + 345 = 357.",
    "hi\n\nQuestion: How many apples?",
    "\\boxed{\\frac{1}{2}} é 中文",
)


def load_tokenizer(location: str):
    """Tokenizer for a model directory, honouring the GGUF fallback marker written at conversion."""
    from transformers import AutoTokenizer

    marker = Path(location) / TOKENIZER_MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        gguf_file = Path(info["gguf_file"])
        if not gguf_file.is_file():
            raise ModelLoadError(
                f"{location} needs its tokenizer from {gguf_file}, which no longer exists; "
                f"delete {location} to convert again"
            )
        return tokenizer_from_gguf(gguf_file)
    # clean_up_tokenization_spaces=False: transformers ignores the saved True for BPE tokenizers anyway (and
    # warned about it on every run); the decoded text is the same.
    return AutoTokenizer.from_pretrained(location, clean_up_tokenization_spaces=False)


CONVERSION_STAMP = "rsp-conversion.json"


def conversion_is_current(target: Path) -> tuple[bool, str]:
    """Whether a converted GGUF cache was written by this version of the conversion, and if not, why
    (caches from before `TOKENIZER_FORMAT` 2 carry no stamp: their Gemma tokenizer split words apart)."""
    if not (target / "config.json").is_file():
        return False, "not converted yet"
    stamp = target / CONVERSION_STAMP
    if not stamp.is_file():
        return False, f"it has no {CONVERSION_STAMP} (converted before tokenizer format {TOKENIZER_FORMAT})"
    try:
        found = json.loads(stamp.read_text()).get("tokenizer_format")
    except (OSError, ValueError) as exc:
        return False, f"its {CONVERSION_STAMP} is unreadable ({exc})"
    if found != TOKENIZER_FORMAT:
        return False, f"its tokenizer format is {found}, this version writes {TOKENIZER_FORMAT}"
    return True, "current"


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantise a GGUF file into a safetensors model directory, atomically (tmp dir + rename); a
    directory already there is reused only if `conversion_is_current`."""
    current, why = conversion_is_current(target)
    if current:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One converter at a time per target: two processes starting on a fresh cache (parallel test workers,
    # two jobs of a sweep) would otherwise both convert, and the second would delete the directory the
    # first is already reading from. The lock is advisory and released when the process ends.
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current, why = conversion_is_current(target)  # converted while we waited
        if current:
            return target
        return _convert_gguf_locked(gguf_path, target, why)


def _convert_gguf_locked(gguf_path: Path, target: Path, why: str) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf_path}")
    if target.exists():
        log.warning("converting %s again: the cache at %s is out of date: %s", gguf_path, target, why)
    else:
        log.info("converting %s to a safetensors cache at %s (once)", gguf_path, target)
    try:
        vocab = read_gguf_vocab(gguf_path)
        tok = tokenizer_from_gguf(gguf_path, vocab)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
    except Exception as exc:  # the loaders raise many types for a bad file
        raise ModelLoadError(f"could not read GGUF file {gguf_path}: {exc}") from exc
    # set by from_pretrained but undeclared on the class: mypy types it by nn.Module (Tensor | Module)
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Written beside the target and renamed into place, so a cache is never seen half-written.
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=target.parent) as tmp_name:
        tmp = Path(tmp_name)
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        again = AutoTokenizer.from_pretrained(str(tmp))
        if any(tok(t)["input_ids"] != again(t)["input_ids"] for t in PROBE_TEXTS):
            # Should a saved tokenizer re-load differently, keep reading it from the GGUF file itself.
            log.warning(
                "tokenizer of %s does not survive save/load; it will be read from the GGUF file", gguf_path
            )
            (tmp / TOKENIZER_MARKER).write_text(
                json.dumps({"gguf_file": str(gguf_path.resolve()), "add_bos_token": vocab.add_bos})
            )
        (tmp / CONVERSION_STAMP).write_text(
            json.dumps({"tokenizer_format": TOKENIZER_FORMAT, "gguf_file": str(gguf_path.resolve())})
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # the emptied temporary name is then no error to clean up
    return target


def resolve_model_dir(spec: str, cache_dir: Path | None = None) -> tuple[str, str]:
    """Map a model spec to (path or Hub id to load, description of the source)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if spec in PACKAGED_MODELS:
        target = cache / "models" / spec
        if not conversion_is_current(target)[0]:
            gguf = locate_packaged_gguf(spec, cache / "gguf")
            convert_gguf(gguf, target)
        return str(target), f"packaged:{spec}"
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
        target = cache / "models" / f"gguf-{path.stem}-{key}"
        convert_gguf(path, target)
        return str(target), f"gguf:{path}"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is a directory but has no config.json, so it is not a model directory"
            )
        return str(path), f"local:{path}"
    if path.exists():
        raise ModelLoadError(f"{path} is a file but not a .gguf model")
    if "/" not in spec or spec.startswith((".", "/", "~")):
        raise ModelLoadError(
            f"unknown model {spec!r}: not a packaged name ({', '.join(PACKAGED_MODELS)}), "
            "not an existing directory or .gguf file, and not a Hub id of the form org/name"
        )
    return spec, f"hub:{spec}"


def converted_path(spec: Any) -> Any:
    """Packaged names and `.gguf` files as the folder rsp converts them into; anything else (Hub ids,
    folders, model objects) unchanged: for tools that load the model themselves (lm-eval, TRL)."""
    if isinstance(spec, str) and (spec in PACKAGED_MODELS or spec.endswith(".gguf")):
        return resolve_model_dir(spec)[0]
    return spec


def load_model(
    spec: str = "smollm2-135m-instruct",
    *,
    dtype: str = "auto",
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load a model and tokenizer ready for RSP injection (eval mode, gradients off)."""
    from transformers import AutoModelForCausalLM

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    warn_if_slow_bf16(torch_dtype, torch_device)
    location, source = resolve_model_dir(spec, Path(cache_dir) if cache_dir else None)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        tokenizer = load_tokenizer(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype, **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"could not load model {spec!r} from {location}: {exc}") from exc
    # transformers wraps PreTrainedModel.to in a decorator whose type drops the bound self
    model.to(torch_device).requires_grad_(False)  # type: ignore[arg-type]
    return wrap_model(model, tokenizer, spec, source=source, location=str(location))


def wrap_model(
    model: torch.nn.Module,
    tokenizer,
    name: str = "in-memory",
    *,
    prepare: bool = True,
    source: str = "memory",
    location: str | None = None,
) -> LoadedModel:
    """Use an already-built model (a tiny test model, or one from your own code). `prepare=False` (what
    `rsp.attach` uses) leaves it untouched: no eval mode, no check that it generates from `inputs_embeds`."""
    if prepare:
        check_inputs_embeds_support(model)
        model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        source=source,
        stop_token_ids=stop_token_ids_from(
            getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer
        ),
        pad_token_id=pad_id(tokenizer),
        config=getattr(model, "config", None),
        stats_cache_dir=stats_dir(location, source) if location else None,
        location=location,
    )

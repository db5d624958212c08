"""The input-embedding table read straight from a checkpoint's safetensors, without building the model.

Why: RSP injection needs only that table (its statistics; row lookups for `embeds` prompts), the
tokenizer and the stop ids; a full HF model beside an engine that holds its own weights (vLLM) doubled
the host memory. `EmbeddingModel` holds at most the table; `embedding_stats` reads only that tensor.

The numbers are the loaded model's: the table is cast to `load_model`'s dtype, Gemma's sqrt(hidden_size)
scale is applied as transformers' ScaledWordEmbedding applies it (a 0-d tensor in the weight dtype),
and goes through the loaded model's `probe_embed_scale`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from rsp.core.stats import EmbeddingStats, MeanMode, RowSelection, fit_embedding_stats
from rsp.models.loading import (
    ModelBase,
    ModelLoadError,
    cached_stats,
    load_tokenizer,
    pad_id,
    probe_embed_scale,
    resolve_dtype,
    resolve_model_dir,
    stats_dir,
    stop_token_ids_from,
)

# Key endings of the input-embedding tensor across architectures (Llama/Gemma/Qwen/Mistral, GPT-2,
# BLOOM/BERT-style, GPT-NeoX, original Llama checkpoints).
EMBEDDING_SUFFIXES = (
    "embed_tokens.weight",
    "wte.weight",
    "word_embeddings.weight",
    "embed_in.weight",
    "tok_embeddings.weight",
)
# model_type values whose transformers embedding multiplies the lookup by sqrt(hidden_size).
SCALED_EMBEDDING_TYPES = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text"})
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class _Checkpoint:
    """Files of a model folder, or of a Hub repository fetched one file at a time (only what is asked for)."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.local = Path(location).is_dir()

    def file(self, name: str) -> Path | None:
        if self.local:
            path = Path(self.location) / name
            return path if path.is_file() else None
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return Path(hf_hub_download(self.location, name))
        except EntryNotFoundError:
            return None
        except Exception as exc:  # offline, gated, unknown repository: the hub raises many types
            raise ModelLoadError(
                f"could not fetch {name} of {self.location} from the Hugging Face Hub: {exc}"
            ) from exc

    def tensor_files(self) -> tuple[dict[str, str], str]:
        """Key -> file name of every weight tensor (a sharded checkpoint's from its index alone, so a Hub
        repository later fetches one shard), and what was read to learn it (for messages)."""
        index = self.file(INDEX_FILE)
        if index is not None:
            return dict(json.loads(index.read_text()).get("weight_map", {})), str(index)
        single = self.file(SINGLE_FILE)
        files = [single] if single is not None else []
        if not files and self.local:  # unusual names, e.g. a lone "model-00001-of-00001.safetensors"
            files = sorted(Path(self.location).glob("*.safetensors"))
        if not files:
            present = ", ".join(sorted(p.name for p in Path(self.location).iterdir())) if self.local else "?"
            raise ModelLoadError(
                f"{self.location} has no safetensors weights (no {INDEX_FILE} or {SINGLE_FILE}; "
                f"it holds {present}): the embedding table can only be read from safetensors"
            )
        keys: dict[str, str] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as handle:
                keys.update(dict.fromkeys(handle.keys(), f.name))
        return keys, ", ".join(str(f) for f in files)

    def required(self, name: str) -> Path:
        path = self.file(name)
        if path is None:
            raise ModelLoadError(f"{self.location}: {INDEX_FILE} names {name}, which is missing")
        return path


def read_config(location: str) -> dict:
    path = _Checkpoint(location).file("config.json")
    if path is None:
        raise ModelLoadError(f"{location} has no config.json")
    return json.loads(path.read_text())


def _text_config(config: dict) -> dict:
    """The language model's part of a config (multimodal configs nest it under text_config)."""
    text = config.get("text_config")
    return text if isinstance(text, dict) else config


def _shape(path: Path, key: str) -> tuple[int, ...]:
    with safe_open(str(path), framework="pt") as handle:
        return tuple(handle.get_slice(key).get_shape())


def find_embedding_tensor(
    location: str, config: dict | None = None, tensor_name: str | None = None
) -> tuple[Path, str]:
    """(safetensors file, key) of the input-embedding table, found by the key's ending (it varies by
    architecture and wrapper); several matches are narrowed to the config's (vocab_size, hidden_size)."""
    ckpt = _Checkpoint(location)
    keys, where = ckpt.tensor_files()
    if tensor_name is not None:
        if tensor_name not in keys:
            raise ModelLoadError(f"no tensor {tensor_name!r} in {where}")
        return ckpt.required(keys[tensor_name]), tensor_name
    candidates = sorted(k for k in keys if any(k == s or k.endswith("." + s) for s in EMBEDDING_SUFFIXES))
    if not candidates:
        raise ModelLoadError(
            f"no input-embedding tensor in {where}: no key ends in {', '.join(EMBEDDING_SUFFIXES)} "
            f"(a checkpoint that stores only lm_head.weight cannot be read this way)"
        )
    if len(candidates) > 1 and config is not None:
        text = _text_config(config)
        want = (text.get("vocab_size"), text.get("hidden_size"))
        fitting = [k for k in candidates if _shape(ckpt.required(keys[k]), k) == want]
        candidates = fitting or candidates
    if len(candidates) > 1:
        raise ModelLoadError(
            f"several input-embedding candidates in {where}: {', '.join(candidates)}; "
            "pass tensor_name= to choose one"
        )
    return ckpt.required(keys[candidates[0]]), candidates[0]


@dataclass(frozen=True)
class EmbeddingTensor:
    """Where a checkpoint's input-embedding table is, its (V, d) shape, and the dtype it is read into."""

    path: Path
    key: str
    shape: tuple[int, int]
    dtype: torch.dtype

    def read(self, rows: int | None = None) -> torch.Tensor:
        """The table (or its first `rows` rows), cast with the rounding `load_model` applies for its dtype."""
        with safe_open(str(self.path), framework="pt") as handle:
            raw = handle.get_tensor(self.key) if rows is None else handle.get_slice(self.key)[:rows]
        return raw.to(self.dtype)


def locate_embedding_table(
    location: str, *, dtype: torch.dtype, config: dict | None = None, tensor_name: str | None = None
) -> EmbeddingTensor:
    """Find and check the input-embedding tensor, reading only the safetensors headers."""
    path, key = find_embedding_tensor(location, config, tensor_name)
    shape = _shape(path, key)
    if len(shape) != 2:
        raise ModelLoadError(f"{key} in {path} has shape {shape}, not (vocab, hidden)")
    hidden = _text_config(config or {}).get("hidden_size")
    if hidden and shape[1] != hidden:
        raise ModelLoadError(f"{key} in {path} has width {shape[1]} but the config says hidden_size {hidden}")
    return EmbeddingTensor(path, key, (int(shape[0]), int(shape[1])), dtype)


def _scale_tensor(config: dict, dtype: torch.dtype) -> torch.Tensor | None:
    """sqrt(hidden_size) for model types whose embedding is scaled (Gemma), else None. As transformers
    builds the scale buffer: config.hidden_size**0.5 under the load dtype as default, one rounding."""
    for part in (config, _text_config(config)):
        if part.get("model_type") in SCALED_EMBEDDING_TYPES:
            hidden = _text_config(config).get("hidden_size") or part.get("hidden_size")
            if not hidden:
                raise ModelLoadError(f"config of model type {part['model_type']} has no hidden_size")
            return torch.tensor(float(hidden) ** 0.5, dtype=dtype)
    return None


def _lookup(table: torch.Tensor, scale: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor:
    rows = torch.nn.functional.embedding(ids, table)
    return rows if scale is None else rows * scale.to(table.dtype)  # as Gemma's ScaledWordEmbedding.forward


@dataclass(kw_only=True)
class EmbeddingModel(ModelBase):
    """Tokenizer, stop ids and input-embedding table of a checkpoint: `LoadedModel` where the transformer is
    never run here (vLLM loads its own copy). The table is read on first use only (`embed`), a statistics
    fit reads it transiently: with cached statistics, vLLM's mixed prompts hold no weight here at all."""

    tensor: EmbeddingTensor
    scale: torch.Tensor | None = None  # Gemma: sqrt(hidden_size) as a 0-d tensor in the model dtype
    _table: torch.Tensor | None = field(default=None, repr=False)

    @functools.cached_property
    def embed_scale(self) -> float:
        """The loaded model's number, from the same first 64 rows (read alone if the table is not)."""
        rows = self._table[:64] if self._table is not None else self.tensor.read(64)
        return probe_embed_scale(rows, lambda ids: _lookup(rows, self.scale, ids))

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self.tensor.dtype

    @property
    def hidden_size(self) -> int:
        return self.tensor.shape[1]

    @property
    def vocab_rows(self) -> int:
        return self.tensor.shape[0]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self._table is None:  # (V, d), raw, in the model dtype, on the CPU: read on first use
            self._table = self.tensor.read()
        return _lookup(self._table, self.scale, input_ids.to(self.device))

    def embedding_table(self) -> torch.Tensor:
        return self._table if self._table is not None else self.tensor.read()


def embedding_stats(
    path_or_id: str,
    *,
    rows: RowSelection = "all",
    mean_mode: MeanMode = "scalar",
    dtype: str = "auto",
    cache_dir: str | Path | None = None,
    tensor_name: str | None = None,
) -> EmbeddingStats:
    """RSP statistics of a checkpoint (anything `load_model` takes), reading only its input-embedding
    tensor (and, for rows="tokens", its tokenizer); equal to `load_model(...).embedding_stats(...)`, and
    sharing its on-disk cache."""
    location, source = resolve_model_dir(path_or_id, Path(cache_dir) if cache_dir else None)

    def fit() -> EmbeddingStats:
        config = read_config(location)
        tensor = locate_embedding_table(
            location, dtype=resolve_dtype(dtype), config=config, tensor_name=tensor_name
        )
        table = tensor.read()
        scale = _scale_tensor(config, table.dtype)
        embed_scale = probe_embed_scale(table, lambda ids: _lookup(table, scale, ids))
        tokens = len(load_tokenizer(location)) if rows == "tokens" else None
        return fit_embedding_stats(
            table, embed_scale=embed_scale, rows=rows, num_real_tokens=tokens, mean_mode=mean_mode
        )

    return cached_stats(stats_dir(location, source), rows, mean_mode, fit)


def load_embedding_model(
    spec: str = "smollm2-135m-instruct",
    *,
    dtype: str = "auto",
    cache_dir: str | Path | None = None,
    tensor_name: str | None = None,
) -> EmbeddingModel:
    """The `EmbeddingModel` of `spec` (anything `load_model` takes), on the CPU: the injection side of an
    engine that loads the model itself. Only safetensors headers are read here."""
    # here, not at the top: `embedding_stats` (this module's other use) reads one tensor, no transformers
    from transformers import AutoConfig

    torch_dtype = resolve_dtype(dtype)
    location, source = resolve_model_dir(spec, Path(cache_dir) if cache_dir else None)
    config = read_config(location)
    # eos_token_id as `model.generation_config` has it: generation_config.json, else the model config
    gen_path = _Checkpoint(location).file("generation_config.json")
    gen = json.loads(gen_path.read_text()) if gen_path is not None else {}
    eos = gen.get("eos_token_id", config.get("eos_token_id", _text_config(config).get("eos_token_id")))
    try:
        tokenizer = load_tokenizer(location)
        hf_config = AutoConfig.from_pretrained(location)
    except OSError as exc:
        raise ModelLoadError(
            f"could not load the tokenizer or config of {spec!r} from {location}: {exc}"
        ) from exc
    return EmbeddingModel(
        tensor=locate_embedding_table(location, dtype=torch_dtype, config=config, tensor_name=tensor_name),
        tokenizer=tokenizer,
        name=spec,
        source=source,
        location=str(location),
        config=hf_config,
        stop_token_ids=stop_token_ids_from(eos, tokenizer),
        pad_token_id=pad_id(tokenizer),
        scale=_scale_tensor(config, torch_dtype),
        stats_cache_dir=stats_dir(location, source),
    )

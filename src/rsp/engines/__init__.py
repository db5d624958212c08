"""Generation engines behind one interface: hf (default), the lean and prefix-shared paths, vllm."""

from pathlib import Path

from rsp.engines.base import Completion, Engine, SamplingConfig
from rsp.engines.hf import HFEngine
from rsp.engines.lean import LeanEngine
from rsp.engines.prefix import PrefixEngine
from rsp.engines.vllm import VLLMEngine  # vLLM itself is imported only when the engine is built
from rsp.models.embeddings import load_embedding_model
from rsp.models.loading import ModelBase, load_model

ENGINES: dict[str, type[HFEngine]] = {"hf": HFEngine, "lean": LeanEngine, "prefix": PrefixEngine}
ENGINE_NAMES: tuple[str, ...] = (*ENGINES, "vllm")


def load_for_engine(
    spec: str, engine: str, *, dtype: str = "auto", device: str = "cpu", cache_dir: str | Path | None = None
) -> ModelBase:
    """What `engine` needs of model `spec`: for vllm only the tokenizer and input-embedding table on the
    CPU (vLLM loads the weights itself; a full HF copy beside it doubled the memory), else the whole model."""
    if engine == "vllm":
        return load_embedding_model(spec, dtype=dtype, cache_dir=cache_dir)
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINE_NAMES)}")
    return load_model(spec, dtype=dtype, device=device, cache_dir=cache_dir)


def create_engine(engine: str, lm, **vllm_options) -> Engine:
    """The named engine around `lm`; options (model_path, tensor_parallel_size, ...) go to `VLLMEngine`."""
    if engine not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINE_NAMES)}")
    return ENGINES[engine](lm) if engine in ENGINES else VLLMEngine(lm, **vllm_options)


__all__ = [
    "ENGINES",
    "ENGINE_NAMES",
    "Engine",
    "Completion",
    "HFEngine",
    "LeanEngine",
    "PrefixEngine",
    "SamplingConfig",
    "create_engine",
    "load_for_engine",
]

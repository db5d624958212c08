"""Generation engines behind one interface: hf (default), lean and prefix-shared HF paths, vllm (scale-out)."""

from rsp.backends.base import Backend, Completion, SamplingConfig
from rsp.backends.hf import HFBackend
from rsp.backends.lean import LeanHFBackend
from rsp.backends.prefix import PrefixSharedHFBackend

ENGINES = {"hf": HFBackend, "lean": LeanHFBackend, "prefix": PrefixSharedHFBackend}
ENGINE_NAMES: tuple[str, ...] = (*ENGINES, "vllm")


def create_backend(engine: str, lm, **vllm_options) -> Backend:
    """The named engine around `lm`; options (model_path, tensor_parallel_size, ...) go to `VLLMBackend`."""
    if engine in ENGINES:
        return ENGINES[engine](lm)
    if engine != "vllm":
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINE_NAMES)}")
    from rsp.backends.vllm import VLLMBackend

    return VLLMBackend(lm, **vllm_options)


__all__ = ["ENGINES", "ENGINE_NAMES", "Backend", "Completion", "HFBackend", "LeanHFBackend", "PrefixSharedHFBackend",
           "SamplingConfig", "create_backend"]

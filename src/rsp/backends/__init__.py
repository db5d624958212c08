"""Generation engines behind one interface: hf (default), lean and prefix-shared HF paths, vllm (scale-out)."""

from rsp.backends.base import Backend, Completion, SamplingConfig
from rsp.backends.hf import HFBackend
from rsp.backends.lean import LeanHFBackend
from rsp.backends.prefix import PrefixSharedHFBackend

ENGINES = {"hf": HFBackend, "lean": LeanHFBackend, "prefix": PrefixSharedHFBackend}
ENGINE_NAMES: tuple[str, ...] = (*ENGINES, "vllm")


def create_backend(engine: str, lm, *, model_path: str | None = None, **vllm_options) -> Backend:
    """The named engine around `lm`; "vllm" also needs the model folder vLLM loads (`model_path`)."""
    if engine in ENGINES:
        return ENGINES[engine](lm)
    if engine != "vllm":
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINE_NAMES)}")
    if model_path is None:
        raise ValueError("the vllm engine needs the model's folder (model_path)")
    from rsp.backends.vllm import VLLMBackend

    options = {"dtype": str(lm.dtype).removeprefix("torch."), "enforce_eager": lm.device.type == "cpu",
               **vllm_options}
    return VLLMBackend(lm, model_path, **options)

__all__ = ["ENGINES", "ENGINE_NAMES", "Backend", "Completion", "HFBackend", "LeanHFBackend", "PrefixSharedHFBackend",
           "SamplingConfig", "create_backend"]

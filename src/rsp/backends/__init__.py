"""Generation engines behind one interface: hf (default), lean and prefix-shared HF paths, vllm (scale-out)."""

import os

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

    on_cpu = lm.device.type == "cpu"
    options: dict = {"dtype": str(lm.dtype).removeprefix("torch."), "enforce_eager": on_cpu}
    if on_cpu and "gpu_memory_utilization" not in vllm_options and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        options["gpu_memory_utilization"] = cpu_memory_fraction()
    options.update(vllm_options)
    return VLLMBackend(lm, model_path, **options)


def cpu_memory_fraction(share_of_available: float = 0.5) -> float:
    """vllm-cpu's share of host memory (its `gpu_memory_utilization`): half of what is free now.

    Why: on the CPU backend vLLM reserves `gpu_memory_utilization` (default 0.92) of *all* RAM for its KV
    cache and refuses to start when less is free, which is always the case beside an HF copy of the model.
    """
    total = available = None
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                total = int(line.split()[1])
            elif line.startswith("MemAvailable:"):
                available = int(line.split()[1])
    if not total or available is None:
        return 0.4
    return round(max(0.05, min(0.9, share_of_available * available / total)), 3)

__all__ = ["ENGINES", "ENGINE_NAMES", "Backend", "Completion", "HFBackend", "LeanHFBackend", "PrefixSharedHFBackend",
           "SamplingConfig", "create_backend"]

"""Generation engines behind one interface: hf (default), lean and prefix-shared HF paths, vllm (scale-out)."""

from rsp.backends.base import Backend, Completion, SamplingConfig
from rsp.backends.hf import HFBackend
from rsp.backends.lean import LeanHFBackend
from rsp.backends.prefix import PrefixSharedHFBackend

ENGINES = {"hf": HFBackend, "lean": LeanHFBackend, "prefix": PrefixSharedHFBackend}

__all__ = ["ENGINES", "Backend", "Completion", "HFBackend", "LeanHFBackend", "PrefixSharedHFBackend",
           "SamplingConfig"]

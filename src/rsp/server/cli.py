"""`rsp serve`: the OpenAI-compatible server from the command line.

Registered by `rsp.cli` like the other sub-command packages. Importing this module needs nothing
beyond rsp itself, so `rsp --help` works without the `serve` extra; FastAPI and uvicorn are imported
only when the server starts.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

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


def register(subparsers) -> None:
    from rsp.core.insert import INSERTION_POINTS
    from rsp.engines import ENGINE_NAMES

    p = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible server: each of n samples carries its own RSP",
        description="Serve /v1/completions and /v1/chat/completions; concurrent requests share engine batches. "
        "See docs/serving.md.",
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="packaged name, local dir, .gguf file or Hub id (default: %(default)s)",
    )
    g.add_argument(
        "--served-model-name",
        help="the name clients send as `model` (default: the packaged name or "
        "Hub id, or a local path's last component)",
    )
    g.add_argument(
        "--engine", default="hf", choices=ENGINE_NAMES, help="generation engine (default: %(default)s)"
    )
    g.add_argument(
        "--dtype",
        default="auto",
        help="auto (bf16), bfloat16, float32, float16; float32 makes greedy "
        "outputs independent of how requests are batched",
    )
    g.add_argument("--device", default="cpu")
    g.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm engine only")
    g.add_argument("--data-parallel-size", type=int, default=1, help="vllm engine only")
    g = p.add_argument_group("injection (defaults for requests without an `rsp` field)")
    g.add_argument(
        "--rsp-length", type=int, default=4, help="L, vectors per RSP; 0 = plain sampling (default: 4)"
    )
    g.add_argument("--rsp-scale", type=float, default=1.0)
    g.add_argument("--position", default="after_generation_prompt", choices=INSERTION_POINTS)
    g.add_argument("--method", default="rsp", help="injection method (`rsp methods`)")
    g.add_argument("--stats-rows", default="all", choices=["all", "tokens"])
    g.add_argument("--stats-mean", default="scalar", choices=["scalar", "per_dim"])
    g.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="server-side method setting, e.g. soft_prompt=path.safetensors (requests cannot set these)",
    )
    g.add_argument(
        "--rsp-seed",
        type=int,
        default=0,
        help="server seed: requests without `seed` get seeds derived from it and a request counter",
    )
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="bind address; anything but loopback needs --api-key")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--api-key", default=None, help="required Bearer token (default: $RSP_API_KEY)")
    g.add_argument(
        "--max-batch-size", type=int, default=32, help="rows per engine batch (default: %(default)s)"
    )
    g.add_argument(
        "--batch-wait-ms",
        type=float,
        default=20.0,
        help="a batch starts when full, when no request has come for this long, or when its oldest "
        "row has waited 10x this (default: %(default)s)",
    )
    g.add_argument("--max-n", type=int, default=64, help="largest n per request (default: %(default)s)")
    g.add_argument(
        "--max-tokens-limit", type=int, default=1024, help="largest max_tokens (default: %(default)s)"
    )
    g.add_argument("--max-prompts", type=int, default=32, help="prompts per completions request")
    g.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default: 1 MiB)")
    g.add_argument("--max-rsp-length", type=int, default=64, help="largest per-request rsp.length")
    g.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        help="concurrent connections before new ones get 503 (default: %(default)s)",
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from rsp.cli import method_extra_from_args
    from rsp.generation import RSPConfig

    api_key = args.api_key or os.environ.get("RSP_API_KEY") or None
    if not is_loopback(args.host) and not api_key:
        raise ValueError(
            f"binding {args.host} exposes the server beyond this machine: pass --api-key (or set "
            "RSP_API_KEY), or bind 127.0.0.1"
        )
    rsp_cfg = RSPConfig(
        length=args.rsp_length,
        scale=args.rsp_scale,
        position=args.position,
        method=args.method,
        stats_rows=args.stats_rows,
        stats_mean=args.stats_mean,
        options=method_extra_from_args(args.method_option),
    ).validate()
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

    engine_options = {}
    if args.engine == "vllm":
        engine_options = {
            "tensor_parallel_size": args.tensor_parallel_size,
            "data_parallel_size": args.data_parallel_size,
        }
    generator = Generator(
        args.model, engine=args.engine, dtype=args.dtype, device=args.device, **engine_options
    )
    generator.injection(rsp_cfg)  # build (and fit its statistics) before the first request
    config = ServeConfig(
        model_name=args.served_model_name or served_name(args.model),
        rsp=rsp_cfg,
        seed=args.rsp_seed,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_n=args.max_n,
        max_tokens_limit=args.max_tokens_limit,
        max_prompts=args.max_prompts,
        max_body_bytes=args.max_body_bytes,
        max_rsp_length=args.max_rsp_length,
        api_key=api_key,
    )
    app = create_app(generator, config)
    log.info(
        "rsp serve: %r on http://%s:%d (api key %s)",
        config.model_name,
        args.host,
        args.port,
        "required" if api_key else "off",
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=False,
        limit_concurrency=args.max_connections,
        timeout_graceful_shutdown=None,
        server_header=False,
    )
    return 0

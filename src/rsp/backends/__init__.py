"""Deprecated import path: the generation engines moved to `rsp.engines` (one name per concept: the
CLI, configs and docs all say "engine"). This alias keeps `rsp.backends` and its submodules importable,
with a DeprecationWarning, for one release; it will be removed in 0.3."""

from __future__ import annotations

import importlib
import sys
import warnings

from rsp.engines import *  # noqa: F403
from rsp.engines import __all__ as __all__  # noqa: F401
from rsp.engines import create_engine

warnings.warn(
    "rsp.backends is renamed rsp.engines (and create_backend create_engine, *Backend classes *Engine); "
    "the old path works until 0.3",
    DeprecationWarning,
    stacklevel=2,
)

for _name in ("base", "hf", "hook", "kvcache", "lean", "packed", "prefix", "vllm"):
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"rsp.engines.{_name}")

create_backend = create_engine

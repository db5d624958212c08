"""A safetensors file as JSON text, and back: how the ledger keeps a trained soft prompt.

The map's soft-prompt cells must all use one set of vectors (training against a wall-clock budget gives
different vectors on every machine), yet the repository holds no weight files. A soft prompt is only
L x d floats (4 x 576 for SmolLM2), so the ledger keeps it as JSON: every tensor's dtype, shape and
values, the file's string metadata, and a SHA-256 of the raw tensor bytes that `restore` checks, so the
safetensors file it writes holds exactly the trained tensors. float32 values written by Python's `repr`
read back bit for bit.

The train step restores through this file as a script (`python -P .../tensorjson.py restore J F`): the
step runs with the map's frozen code first on PYTHONPATH, which predates this module, so the module
imports nothing from rsp. (`-P` keeps the script's own directory off sys.path, where `select.py` would
shadow the standard library's `select`.)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "safetensors-json/1"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def _read(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of the safetensors file at `path`."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {}), {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (a safe_open handle is not a dict)


def file_digest(path: str | Path) -> str:
    """The sha256 that `dump` records for the safetensors file at `path`."""
    return _digest(_read(path)[1])


def dump(source: str | Path, target: str | Path) -> Path:
    """Write the safetensors file `source` as JSON at `target` (atomically); float32/float64 only."""
    metadata, tensors = _read(source)
    doc: dict = {"format": FORMAT, "metadata": metadata, "tensors": {}, "sha256": _digest(tensors)}
    for key, t in tensors.items():
        name = str(t.dtype).removeprefix("torch.")
        if name not in DTYPES:
            raise ValueError(f"{source}: tensor {key!r} is {name}; only {sorted(DTYPES)} are kept as JSON")
        doc["tensors"][key] = {"dtype": name, "shape": list(t.shape), "values": t.flatten().tolist()}
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target


def restore(source: str | Path, target: str | Path) -> Path:
    """Write the JSON made by `dump` back as a safetensors file; refuses one whose tensors do not match
    their recorded SHA-256."""
    doc = json.loads(Path(source).read_text(encoding="utf-8"))
    if doc.get("format") != FORMAT:
        raise ValueError(f"{source} is not {FORMAT} (format: {doc.get('format')!r})")
    tensors = {
        key: torch.tensor(t["values"], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
        for key, t in doc["tensors"].items()
    }
    if _digest(tensors) != doc["sha256"]:
        raise ValueError(f"{source}: the tensors do not match their recorded sha256; the file is damaged")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    save_file(tensors, str(tmp), metadata=doc["metadata"])
    tmp.replace(target)
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("dump", "restore"):
        print(
            "usage: tensorjson.py dump FILE.safetensors FILE.json | restore FILE.json FILE.safetensors",
            file=sys.stderr,
        )
        return 2
    (dump if argv[0] == "dump" else restore)(argv[1], argv[2])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Statistics of the effective input-embedding table, which parameterise the RSP distribution:
"effective" is what the first block receives (Gemma's sqrt(d) scale applied), so RSP rows live in the
same space as real token rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

RowSelection = Literal["all", "tokens"]
MeanMode = Literal["scalar", "per_dim"]


@dataclass(frozen=True)
class EmbeddingStats:
    """Mean and standard deviation of an embedding table (entrywise)."""

    mean: torch.Tensor  # shape () for the isotropic default, (d,) for per-dimension means
    std: float  # scalar: the RSP distribution is isotropic
    dim: int
    rows_used: int
    rows: RowSelection
    mean_mode: MeanMode
    embed_scale: float

    def mean_vector(self) -> torch.Tensor:
        """Mean broadcast to shape (d,), in fp32."""
        return self.mean.float().expand(self.dim).clone()

    def to_dict(self) -> dict:
        meta = asdict(self)
        meta["mean"] = self.mean.tolist()
        return meta

    def save(self, path: str | Path) -> None:
        meta = {k: str(v) for k, v in self.to_dict().items() if k != "mean"}
        save_file({"mean": self.mean.contiguous()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingStats:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        numbers = {"std": float, "dim": int, "rows_used": int, "embed_scale": float}  # the rest are strings
        fields = {k: numbers.get(k, str)(v) for k, v in meta.items()}
        return cls(mean=load_file(str(path))["mean"], **fields)


def fit_embedding_stats(
    weight: torch.Tensor,
    *,
    embed_scale: float = 1.0,
    rows: RowSelection = "all",
    num_real_tokens: int | None = None,
    mean_mode: MeanMode = "scalar",
) -> EmbeddingStats:
    """Fit the RSP distribution on a (V, d) table: `rows="tokens"` keeps the first `num_real_tokens` rows
    (dropping untrained padding rows); the variance is the population variance of all selected entries, so
    draws are isotropic.
    """
    if weight.dim() != 2:
        raise ValueError(f"embedding table must be 2-D (V, d), got shape {tuple(weight.shape)}")
    if rows not in ("all", "tokens"):
        raise ValueError(f"rows must be 'all' or 'tokens', got {rows!r}")
    if mean_mode not in ("scalar", "per_dim"):
        raise ValueError(f"mean_mode must be 'scalar' or 'per_dim', got {mean_mode!r}")
    table = weight.detach()
    if rows == "tokens":
        if num_real_tokens is None or num_real_tokens < 1:
            raise ValueError("rows='tokens' needs num_real_tokens (the tokenizer's length)")
        table = table[: min(num_real_tokens, table.shape[0])]
    # float64 accumulation: a 262k x 640 table in fp32 loses digits in the mean.
    table = table.to(torch.float64) * float(embed_scale)
    mean_all = table.mean()
    std = float(table.var(unbiased=False).sqrt())
    mean = mean_all if mean_mode == "scalar" else table.mean(dim=0)
    return EmbeddingStats(
        mean=mean.to(torch.float32),
        std=std,
        dim=int(table.shape[1]),
        rows_used=int(table.shape[0]),
        rows=rows,
        mean_mode=mean_mode,
        embed_scale=float(embed_scale),
    )

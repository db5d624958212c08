"""Random Soft Prompt sampler: L i.i.d. isotropic Gaussian vectors per attempt, reproducible by seed."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rsp.core.stats import EmbeddingStats


class RSPSampler:
    """Draws RSPs of shape (L, d) from N(mean, (scale * std)^2 I), each from its own seeded CPU
    `torch.Generator` in fp32, so an RSP is bit-identical across machines and independent of decoding
    randomness and of which attempts share a batch.
    """

    def __init__(self, stats: EmbeddingStats, length: int, scale: float = 1.0) -> None:
        if length < 0:
            raise ValueError(f"RSP length must be >= 0, got {length}")
        if scale < 0:
            raise ValueError(f"RSP scale must be >= 0, got {scale}")
        self.stats = stats
        self.length = int(length)
        self.scale = float(scale)
        self._mean = stats.mean_vector()

    def sample_one(self, seed: int) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = torch.randn(self.length, self.stats.dim, generator=gen, dtype=torch.float32)
        return self._mean + noise * (self.stats.std * self.scale)

    def sample(self, seeds: Sequence[int]) -> torch.Tensor:
        """Return a (len(seeds), L, d) fp32 tensor, row i drawn from seeds[i]."""
        if len(seeds) == 0:
            return torch.empty(0, self.length, self.stats.dim)
        return torch.stack([self.sample_one(s) for s in seeds])

"""Prepacked oneDNN weights for a model's bf16 linear layers on the CPU.

Why: in eager mode every bf16 `nn.Linear` call makes oneDNN re-lay the weight into its blocked format, a
large share of a decode step's matmul; packing each weight once, as inductor's freezing pass does, removes
it. Outputs are bit-identical to `F.linear` (checked at load time and in tests); fp32 weights are left
alone because MKL's packed fp32 path rounds differently.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import TypeGuard

import torch

log = logging.getLogger(__name__)


def packing_supported() -> tuple[bool, str]:
    if not torch.backends.mkldnn.is_available():
        return False, "torch was built without oneDNN (mkldnn)"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False, "this CPU has no oneDNN bf16 support"
    return True, ""


def _packable(module: torch.nn.Module) -> TypeGuard[torch.nn.Linear]:
    return (
        isinstance(module, torch.nn.Linear)
        and module.weight.device.type == "cpu"
        and module.weight.dtype == torch.bfloat16
    )


class WeightPacker:
    """Packs each bf16 CPU linear weight once and repacks it only when the weight changes."""

    def __init__(self, batch_hint: int = 32) -> None:
        self.batch_hint = batch_hint
        self._packed: dict[int, tuple[int, int, torch.Tensor]] = {}
        self.identical: bool | None = None  # result of the one-off bit-identity check

    def _check_identical(self, module: torch.nn.Linear) -> bool:
        if self.identical is None:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(3, module.in_features, generator=gen).to(module.weight.dtype)
            with torch.no_grad():
                want = torch.nn.functional.linear(x, module.weight, module.bias)
                got = _packed_forward(module, self.packed_weight(module))(x)
            self.identical = torch.equal(want, got)
            if not self.identical:
                log.warning("weight packing off: packed oneDNN linear is not bit-identical to F.linear here")
        return self.identical

    def packed_weight(self, module: torch.nn.Linear) -> torch.Tensor:
        w = module.weight
        key = (w.data_ptr(), w._version)
        hit = self._packed.get(id(module))
        if hit is not None and hit[:2] == key:
            return hit[2]
        packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), self.batch_hint)
        self._packed[id(module)] = (*key, packed)
        return packed

    @contextmanager
    def applied(self, model: torch.nn.Module):
        """Within the block, the model's packable linears run on packed weights; restored after."""
        ok, why = packing_supported()
        if not ok:
            log.info("weight packing off: %s", why)
            yield 0
            return
        patched = []
        try:
            for module in model.modules():
                if not _packable(module) or "forward" in module.__dict__:
                    continue
                if self._check_identical(module):
                    # an instance attribute shadows nn.Linear.forward for this block (deleted after);
                    # mypy flags any assignment over a method
                    module.forward = _packed_forward(  # type: ignore[method-assign]
                        module, self.packed_weight(module)
                    )
                    patched.append(module)
            yield len(patched)
        finally:
            for module in patched:
                del module.forward


def _packed_forward(module: torch.nn.Linear, packed: torch.Tensor):
    bias = module.bias.detach() if module.bias is not None else None

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != packed.dtype or x.device.type != "cpu" or x.requires_grad:
            return torch.nn.functional.linear(x, module.weight, module.bias)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return forward

"""Method names usable in `rsp eval` and `rsp sweep`, mapped to the injection that implements them.

The registry lives outside `core` so that baselines (trained soft prompts, controls) can add
methods without core depending on them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rsp.core.injection import Injection, NoInjection, RandomSoftPrompt
from rsp.models.loading import LoadedModel


@dataclass(frozen=True)
class MethodOptions:
    """Settings shared by all methods; a method reads the ones it needs."""

    length: int = 4
    scale: float = 1.0
    position: str = "after_generation_prompt"
    stats_rows: str = "all"
    stats_mean: str = "scalar"
    extra: dict = field(default_factory=dict)  # method-specific: soft_prompt path, noise alpha, ...


MethodFactory = Callable[[LoadedModel, MethodOptions], Injection]
_REGISTRY: dict[str, MethodFactory] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_method(name: str, description: str) -> Callable[[MethodFactory], MethodFactory]:
    def wrap(factory: MethodFactory) -> MethodFactory:
        _REGISTRY[name] = factory
        _DESCRIPTIONS[name] = description
        return factory

    return wrap


def _load_plugins() -> None:
    try:
        import rsp.baselines.controls  # noqa: F401  (registers control methods)
    except ImportError as exc:
        if "rsp.baselines.controls" not in str(exc):
            raise


def method_names() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def method_descriptions() -> dict[str, str]:
    _load_plugins()
    return dict(_DESCRIPTIONS)


def build_method(name: str, lm: LoadedModel, options: MethodOptions | None = None) -> Injection:
    """Build the injection for method `name`; raises ValueError naming the known methods."""
    _load_plugins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY))}")
    injection = _REGISTRY[name](lm, options or MethodOptions())
    injection.name = name
    return injection


def _stats(lm: LoadedModel, o: MethodOptions):
    return lm.embedding_stats(rows=o.stats_rows, mean_mode=o.stats_mean)  # type: ignore[arg-type]


@register_method("temperature", "no injection: plain sampling at the run's temperature (the baseline)")
def _temperature(lm: LoadedModel, o: MethodOptions) -> Injection:
    return NoInjection(o.position)


@register_method("none", "alias of temperature: no injection")
def _none(lm: LoadedModel, o: MethodOptions) -> Injection:
    return NoInjection(o.position)


@register_method("rsp", "Random Soft Prompt: L fresh Gaussian vectors per attempt (the paper's method)")
def _rsp(lm: LoadedModel, o: MethodOptions) -> Injection:
    return RandomSoftPrompt(
        _stats(lm, o), o.length, scale=o.scale, position=o.position, granularity="attempt"
    )

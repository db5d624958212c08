"""The method registry: every method usable in `rsp eval`, `rsp sweep`, `rsp.generate` and `rsp.attach`,
with the facts other modules need about it, and `RSPConfig`, the settings a method is built from.

A registered `Method` says what it reads (`uses_length`, `uses_scale`, its `MethodOption`s) and whether
its injected tensor depends on the attempt's seed (`per_attempt`); `rsp sweep` builds its grid from these
facts and `rsp methods` lists them, so nothing outside this module decides by a method's name.

Import direction, one way only: `rsp.baselines.controls` imports this module and registers the controls;
this module imports none of its plugins at import time, but the registry's first lookup imports
`BUILTIN_PLUGINS`, so it is complete wherever it is read while `import rsp.methods` stays cheap. A
third-party method registered with `register_method` under a built-in's name replaces it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

from rsp.config import option, require_choice, require_min
from rsp.core.injection import Granularity, Injection, NoInjection, RandomSoftPrompt
from rsp.core.insert import INSERTION_POINTS
from rsp.core.stats import MeanMode, RowSelection
from rsp.models.loading import ModelBase
from rsp.renamed import renamed_key, renamed_method

Category = Literal["baseline", "rsp", "control", "trained"]
CATEGORIES: tuple[str, ...] = ("baseline", "rsp", "control", "trained")
BASELINE = "temperature"  # the method every other one is compared against: nothing injected
# the flat spelling of each `RSPConfig` field (docs/glossary.md): commands' flags, lm-eval's model_args, TRL's
FLAT_NAMES = {
    "rsp_length": "length",
    "rsp_scale": "scale",
    "rsp_position": "position",
    "method": "method",
    "rsp_stats_rows": "stats_rows",
    "rsp_stats_mean": "stats_mean",
}


@dataclass(frozen=True)
class RSPConfig:
    """What is injected into every attempt: the method and the settings it is built from (the defaults are
    the project's documented choices: see the README's options table).

    Args:
        length: L, the number of injected vectors; 0 injects nothing.
        scale: multiplies the fitted standard deviation of the embedding table.
        position: `after_generation_prompt`, `end_of_user_turn` or `prepend`.
        method: `rsp` or any registered control / baseline (`rsp methods`).
        stats_rows, stats_mean: fit on `all` rows or the tokenizer's `tokens`; `scalar` or `per_dim` mean.
        method_options: settings only one method reads (`soft_prompt` file, `noise_alpha`, ...)."""

    length: int = 4
    scale: float = 1.0
    position: str = "after_generation_prompt"
    method: str = "rsp"
    stats_rows: str = "all"
    stats_mean: str = "scalar"
    method_options: dict = field(default_factory=dict, hash=False)

    @classmethod
    def from_flat(cls, settings: Any, method: str) -> RSPConfig:
        """From an object holding the flat spelling (`rsp_length`, ..., optionally `method_options`;
        docs/glossary.md), e.g. a command's config or TRL's `RSPArguments`."""
        values = {name: getattr(settings, flat) for flat, name in FLAT_NAMES.items() if name != "method"}
        options = dict(getattr(settings, "method_options", None) or {})
        return cls(**values, method=method, method_options=options)

    def validate(self) -> RSPConfig:
        for name in ("length", "scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"RSPConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.position not in INSERTION_POINTS:
            raise ValueError(
                f"RSPConfig.position must be one of {', '.join(INSERTION_POINTS)}, got {self.position!r}"
            )
        known = _registry()
        if self.method not in known:
            raise ValueError(
                f"RSPConfig.{renamed_method(self.method) or f'method {self.method!r} is unknown'}; "
                f"known methods: {', '.join(sorted(known))}"
            )
        return self

    def key(self) -> tuple:
        opts = tuple(sorted((k, str(v)) for k, v in self.method_options.items()))
        return (self.length, self.scale, self.position, self.method, self.stats_rows, self.stats_mean, opts)


STATS_ROWS: tuple[str, ...] = get_args(RowSelection)
STATS_MEANS: tuple[str, ...] = get_args(MeanMode)
_INJECTION = "injection"


@dataclass
class InjectionArgs:
    """The injection's settings in their flat spelling (docs/glossary.md), as a config-dataclass mixin of
    every command that injects; the method is the command's own field, `rsp_config(method)` the result."""

    rsp_length: int = option(4, "L, vectors per RSP (0 = nothing injected)", group=_INJECTION)
    rsp_scale: float = option(1.0, "multiplier on the fitted standard deviation", group=_INJECTION)
    rsp_position: str = option(
        "after_generation_prompt",
        "insertion point of the vectors",
        choices=INSERTION_POINTS,
        group=_INJECTION,
    )
    rsp_stats_rows: str = option(
        "all",
        "fit the statistics on all embedding rows or only the tokenizer's real tokens",
        choices=STATS_ROWS,
        group=_INJECTION,
    )
    rsp_stats_mean: str = option(
        "scalar", "isotropic (scalar) or per-dimension mean", choices=STATS_MEANS, group=_INJECTION
    )
    method_options: dict = option(
        default_factory=dict,
        help="method-specific setting, e.g. soft_prompt=path.safetensors",
        flag="--method-option",
        group=_INJECTION,
    )

    def validate_injection(self, error: type[Exception] = ValueError) -> None:
        require_min(self, 0, "rsp_length", "rsp_scale", error=error)
        require_choice(self.rsp_position, "rsp_position", INSERTION_POINTS, error)
        require_choice(self.rsp_stats_rows, "rsp_stats_rows", STATS_ROWS, error)
        require_choice(self.rsp_stats_mean, "rsp_stats_mean", STATS_MEANS, error)

    def rsp_config(self, method: str) -> RSPConfig:
        return RSPConfig.from_flat(self, method)


MethodFactory = Callable[[ModelBase, RSPConfig], Injection]


@dataclass(frozen=True)
class MethodOption:
    """A setting only one method reads, given as `--method-option KEY=VALUE` (`RSPConfig.method_options`)."""

    key: str
    meaning: str
    required: bool = False
    metavar: str = "VALUE"
    swept: bool = True  # False: a sweep's grid sets it, so its cells do not carry it


@dataclass(frozen=True)
class Method:
    """A registered method and the facts other modules ask about it."""

    name: str
    description: str
    factory: MethodFactory = field(repr=False)
    category: Category = "control"
    uses_length: bool = True
    uses_scale: bool = True
    per_attempt: bool = True  # the injected tensor depends on the attempt's seed
    # The method options it reads; None: not declared (a sweep then passes every option to its cells).
    options: tuple[MethodOption, ...] | None = None
    # The L it injects when it does not read `length` (a trained soft prompt: its file's), else None.
    length_of: Callable[[RSPConfig], int] | None = field(default=None, repr=False)

    @property
    def option_keys(self) -> tuple[str, ...] | None:
        return None if self.options is None else tuple(o.key for o in self.options)

    def cell_options(self, method_options: Mapping[str, Any]) -> dict:
        """The method options one run of this method carries in a sweep: those it reads, grid axes aside."""
        if self.options is None:
            return dict(method_options)
        return {o.key: method_options[o.key] for o in self.options if o.swept and o.key in method_options}

    def missing_options(self, method_options: Mapping[str, Any]) -> list[MethodOption]:
        return [o for o in self.options or () if o.required and not method_options.get(o.key)]

    def injects_nothing(self, config: RSPConfig) -> bool:
        """Whether this method adds nothing to any prompt under `config` (no hook needs attaching)."""
        return self.category == "baseline" or (self.uses_length and config.length == 0)

    def injected_length(self, config: RSPConfig) -> int | None:
        """L as a sweep labels this method's cell: `config.length` when it reads L, else its own or None."""
        if self.uses_length:
            return config.length
        return self.length_of(config) if self.length_of is not None else None

    def build(self, lm: ModelBase, config: RSPConfig | None = None) -> Injection:
        config = replace(config, method=self.name) if config else RSPConfig(method=self.name)
        for key in config.method_options:  # a renamed option is an error naming the new key, not ignored
            renamed = renamed_key(key, f"method option of {self.name}")
            if renamed and key not in (self.option_keys or ()):
                raise ValueError(renamed)
        injection = self.factory(lm, config)
        injection.name = self.name
        return injection


_REGISTRY: dict[str, Method] = {}
# Modules that register the built-in methods beyond `temperature` and `rsp`, imported on the first lookup.
BUILTIN_PLUGINS: tuple[str, ...] = ("rsp.baselines.controls",)
# True from the end of this module (the plugins import it, so not while it registers `temperature` and
# `rsp`) until the first lookup imports them.
_plugins_pending = False


def _registry() -> dict[str, Method]:
    """The registry, after the first call has imported `BUILTIN_PLUGINS`."""
    global _plugins_pending
    if _plugins_pending:
        _plugins_pending = False  # the plugins' own registrations come back here
        try:
            for module in BUILTIN_PLUGINS:
                importlib.import_module(module)
        except BaseException:
            _plugins_pending = True
            raise
    return _REGISTRY


def register(method: Method) -> Method:
    """Add (or replace) a method spec; its category must be one of `CATEGORIES`."""
    if method.category not in CATEGORIES:
        raise ValueError(f"method {method.name!r}: category must be one of {', '.join(CATEGORIES)}")
    if renamed_method(method.name):
        raise ValueError(f"cannot register {method.name!r}: {renamed_method(method.name)}")
    _registry()[method.name] = method  # after the built-ins, so a later registration of a name wins
    return method


def register_method(
    name: str,
    description: str,
    *,
    category: Category = "control",
    uses_length: bool = True,
    uses_scale: bool = True,
    per_attempt: bool = True,
    options: tuple[MethodOption, ...] | None = None,
    length_of: Callable[[RSPConfig], int] | None = None,
) -> Callable[[MethodFactory], MethodFactory]:
    """Decorator form of `register`; the default facts are the cautious ones."""

    def wrap(factory: MethodFactory) -> MethodFactory:
        facts = (category, uses_length, uses_scale, per_attempt, options, length_of)
        register(Method(name, description, factory, *facts))
        return factory

    return wrap


def get_method(name: str) -> Method:
    """The spec of method `name`; ValueError names the known methods (or the new name of a renamed one)."""
    registry = _registry()
    if name not in registry:
        raise ValueError(
            renamed_method(name) or f"unknown method {name!r}; known methods: {', '.join(sorted(registry))}"
        )
    return registry[name]


def method_specs() -> list[Method]:
    registry = _registry()
    return [registry[k] for k in sorted(registry)]


def method_names() -> list[str]:
    return sorted(_registry())


def method_descriptions() -> dict[str, str]:
    """Name -> description, as `rsp methods` lists them."""
    return {m.name: m.description for m in method_specs()}


def build_method(name: str, lm: ModelBase, config: RSPConfig | None = None) -> Injection:
    """Build the injection for method `name` under `config` (whose `method` field `name` overrides)."""
    return get_method(name).build(lm, config)


def embedding_stats_for(lm: ModelBase, config: RSPConfig):
    return lm.embedding_stats(rows=config.stats_rows, mean_mode=config.stats_mean)  # type: ignore[arg-type]


def random_soft_prompt(
    lm: ModelBase, o: RSPConfig, *, granularity: Granularity = "attempt", scale: float | None = None
) -> RandomSoftPrompt:
    """The RSP `o` describes, drawn anew per attempt, per problem or once per run (`granularity`)."""
    scale = o.scale if scale is None else scale
    return RandomSoftPrompt(
        embedding_stats_for(lm, o), o.length, scale=scale, position=o.position, granularity=granularity
    )


@register_method(
    "temperature",
    "no injection: plain sampling at the run's temperature (the baseline)",
    category="baseline",
    uses_length=False,
    uses_scale=False,
    per_attempt=False,
    options=(),
)
def _temperature(lm: ModelBase, o: RSPConfig) -> Injection:
    return NoInjection(o.position)


@register_method(
    "rsp",
    "Random Soft Prompt: L fresh Gaussian vectors per attempt (the paper's method)",
    category="rsp",
    options=(),
)
def _rsp(lm: ModelBase, o: RSPConfig) -> Injection:
    return random_soft_prompt(lm, o)


_plugins_pending = True

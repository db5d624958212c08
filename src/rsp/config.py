"""Command configs: every flag comes from a config dataclass field, parsed by `HfArgumentParser`.

One pattern for every `rsp` command, as in TRL: a command is a set of dataclasses; each field is a flag
(`--rsp-length` for `rsp_length`, its help and choices in the field's metadata, made with `option`);

    rsp eval --config recipe.yaml --n 32      # a YAML (or JSON) file of field values, then CLI overrides
    rsp eval --config recipe.yaml --print-config   # the resolved config, as YAML, and exit

so the flag list is never written by hand. Added here to `HfArgumentParser`, in one place: mapping fields
(repeatable `KEY=VALUE` or a JSON object, merged), comma-separated list fields (`--methods temperature,rsp`),
`--config` with the file's values as defaults (TrlParser's approach), `--print-config`, and an error naming
the new spelling of a flag or key renamed before the first release (`rsp.renamed`). Range checks stay in
each config's `validate()`, written with `require`, so every message names the field and its flag:
"rsp_length (--rsp-length) must be >= 0, got -1".

Settings several commands share are one dataclass mixin with its checks: `ModelArgs` here,
`rsp.engines.args.EngineArgs` and `rsp.methods.InjectionArgs`. A command words a shared flag's help its
own way in the class attribute `_option_help` ({field: help}); `_group_titles` ({group: title}) retitles
groups and lists them in their --help order.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml
from transformers import HfArgumentParser

from rsp.renamed import flag_of, renamed_flag, renamed_key


class ConfigFileError(ValueError):
    """A `--config` file cannot be read, is not a mapping, or names an unknown setting."""


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: Sequence[Any] | None = None,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    metavar: str | None = None,
    group: str | None = None,
    flag: str | None = None,
    comma: bool = True,
) -> Any:
    """A config field that is also a flag. `RSPArgumentParser` reads `group`, `flag` (when not the field's
    name) and `comma` (False: list items may hold commas, e.g. paths) from its metadata; argparse the rest."""
    extra = {"choices": choices and tuple(choices), "metavar": metavar, "group": group, "flag": flag}
    metadata: dict[str, Any] = {"help": help, **{k: v for k, v in extra.items() if v}}
    if not comma:
        metadata["comma"] = False
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_label(name: str) -> str:
    """How a validation message names a setting: the config key and its flag."""
    return f"{name} ({flag_of(name)})"


def require(ok: bool, name: str, message: str, error: type[Exception] = ValueError) -> None:
    """A config check: unless `ok`, raise `error` naming the setting, "`name` (`--flag`) `message`" (without
    the flag for an error class whose settings are not flags: `flagless = True`)."""
    if not ok:
        raise error(f"{name if getattr(error, 'flagless', False) else field_label(name)} {message}")


def require_min(
    config: Any, minimum: float, *names: str, error: type[Exception] = ValueError, strict: bool = False
) -> None:
    """`require` each named field to be >= `minimum` (> with `strict`); None, a setting left unset, passes."""
    for name in names:
        value = getattr(config, name)
        ok = value is None or (value > minimum if strict else value >= minimum)
        require(ok, name, f"must be {'>' if strict else '>='} {minimum}, got {value}", error)


def require_choice(
    value: Any, name: str, allowed: Sequence[Any], error: type[Exception] = ValueError
) -> None:
    """`require` that `value` is one of `allowed`: "... must be one of a, b, got 'c'"."""
    require(value in allowed, name, f"must be one of {', '.join(map(str, allowed))}, got {value!r}", error)


def _unwrap_optional(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _sequence_item(tp: Any) -> tuple[type, type] | None:
    """(container, item type) for list[X] / tuple[X, ...] fields, else None."""
    tp = _unwrap_optional(tp)
    origin = get_origin(tp)
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return origin, (args[0] if args else str)
    return None


def _mapping(text: str) -> dict:
    """A JSON object (`{"bf16": true}`) or one KEY=VALUE (the value read as JSON when it parses)."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"not a JSON object: {exc}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("expected a JSON object")
        return value
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return {key: json.loads(raw)}
    except json.JSONDecodeError:
        return {key: raw}


class _ExtendList(argparse.Action):
    """A list flag: its first use replaces the default, repeats extend it (`--arm A --arm B`)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        seen: set[str] = namespace.__dict__.setdefault("_rsp_lists_seen", set())
        current = list(getattr(namespace, self.dest) or []) if self.dest in seen else []
        seen.add(self.dest)
        setattr(namespace, self.dest, current + list(values))


class _MergeMapping(argparse.Action):
    """A mapping flag: each use merges into the field's value (the config file's, or an earlier flag's)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, {**(getattr(namespace, self.dest, None) or {}), **values})


class RSPArgumentParser(HfArgumentParser):
    """`HfArgumentParser` plus what rsp's commands need (see the module docstring); `parse(argv)`
    returns one instance per dataclass, in the order given."""

    def __init__(
        self,
        dataclass_types: Iterable[Any],
        *,
        defaults: dict[str, Any] | None = None,
        exclude: Iterable[str] = (),
        **kwargs: Any,
    ):
        """`defaults` overrides field defaults for this command (shown in --help); `exclude` names fields
        that are not settings of this command (they keep their defaults, e.g. what a sweep's grid sets)."""
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        self._exclude = set(exclude)
        self._fields: dict[str, dataclasses.Field] = {}
        self._hints: dict[str, Any] = {}
        self._groups: dict[str, Any] = {}
        super().__init__(list(dataclass_types), **kwargs)
        config_help = (
            "YAML or JSON file of settings (keys: the flag names with underscores); flags override it"
        )
        self.add_argument("--config", metavar="FILE", help=config_help)
        self.add_argument(
            "--print-config", action="store_true", help="print the resolved settings as YAML and exit"
        )
        if defaults:
            self.set_defaults(**defaults)

    def _add_dataclass_arguments(self, dtype: Any) -> None:
        hints = get_type_hints(dtype)
        default_group = getattr(dtype, "_argument_group_name", None)
        helps: dict[str, str] = getattr(dtype, "_option_help", {})
        titles: dict[str, str] = getattr(dtype, "_group_titles", {})
        for listed in titles.values():  # the groups the class lists come first in --help, in its order
            if listed not in self._groups:
                self._groups[listed] = self.add_argument_group(listed)
        for f in dataclasses.fields(dtype):
            if not f.init or f.name in self._exclude:
                continue
            if f.name in self._fields:
                raise ValueError(f"two config classes of one command both define {f.name!r}")
            self._fields[f.name] = f
            self._hints[f.name] = hints[f.name]
            group = f.metadata.get("group") or default_group
            title = titles.get(group, group) if group else None
            if title and title not in self._groups:
                self._groups[title] = self.add_argument_group(title)
            # `helps`: this command's wording of a shared field's help
            self._add_field(self._groups[title] if title else self, f, hints[f.name], helps.get(f.name))

    def _add_field(self, group: Any, f: dataclasses.Field, hint: Any, help: str | None = None) -> None:
        meta = dict(f.metadata, **({"help": help} if help else {}))
        meta.pop("group", None)
        flag = meta.pop("flag", None) or flag_of(f.name)
        comma = meta.pop("comma", True)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        base = _unwrap_optional(hint)
        kwargs: dict[str, Any] = {"default": default, **meta}
        if get_origin(base) is dict or base is dict:
            kwargs = {"action": _MergeMapping, "type": _mapping, "metavar": "KEY=VALUE", **kwargs}
            kwargs["help"] = (kwargs.get("help") or "") + " (repeatable)"
        elif _sequence_item(hint) is not None:
            kwargs.update(nargs="+", type=str, action=_ExtendList)
            kwargs.pop("choices", None)  # checked per item after splitting on commas
            split = " (comma- or space-separated, or repeated)" if comma else " (space-separated or repeated)"
            kwargs["help"] = (kwargs.get("help") or "") + split
        elif base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = base
        if default is dataclasses.MISSING:
            kwargs.pop("default")
            kwargs["required"] = True
        group.add_argument(flag, dest=f.name, **kwargs)

    def _read_config_file(self, path: str) -> dict[str, Any]:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigFileError(f"cannot read --config {path}: {exc.strerror}") from None
        try:
            data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            kind = p.suffix.lstrip(".") or "YAML"
            raise ConfigFileError(f"--config {path} is not valid {kind}: {exc}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            got = type(data).__name__
            raise ConfigFileError(f"--config {path} must hold a mapping of settings, got {got}")
        if "config" in data and "kind" in data and isinstance(data["config"], dict):
            data = data["config"]  # a run directory's config.json
        out: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in self._fields:
                known = ", ".join(sorted(self._fields))
                problem = renamed_key(key) or f"unknown setting {key!r}; settings are {known}"
                raise ConfigFileError(f"--config {path}: {problem}")
            out[name] = value
        return out

    def parse(self, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
        argv = list(sys.argv[1:] if argv is None else argv)
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config")
        pre.add_argument("--print-config", action="store_true")
        known, _ = pre.parse_known_args(argv)
        if known.print_config:  # show what would run even before every required setting is given
            for action in self._actions:
                action.required = False
        if known.config:
            values = self._read_config_file(known.config)
            self.set_defaults(**values)
            for action in self._actions:  # a required field given in the file is no longer required
                if action.dest in values:
                    action.required = False
        for arg in argv:
            if arg == "--":
                break
            renamed = renamed_flag(arg)
            if renamed and arg.split("=", 1)[0] not in self._option_string_actions:
                self.error(renamed)
        ns = self.parse_args(argv)
        outputs = self._build(vars(ns))
        if ns.print_config:
            settings = config_dict(*outputs, exclude=self._exclude)
            print(yaml.safe_dump(settings, sort_keys=False, default_flow_style=None), end="")
            raise SystemExit(0)
        return outputs

    def _coerce(self, name: str, value: Any) -> Any:
        hint = self._hints[name]
        seq = _sequence_item(hint)
        if seq is not None and value is not None:
            container, item = seq
            items: list[Any] = []
            split = self._fields[name].metadata.get("comma", True)
            for part in [value] if isinstance(value, str) else value:
                if isinstance(part, str) and split:
                    items += [x.strip() for x in part.split(",") if x.strip()]
                else:
                    items.append(part)
            try:
                converted = [item(x) if not isinstance(x, item) else x for x in items]
            except (TypeError, ValueError):
                why = f"expects {item.__name__} values, got {value!r}"
                raise ValueError(f"{field_label(name)} {why}") from None
            choices = self._fields[name].metadata.get("choices") or ()
            bad = [x for x in converted if choices and x not in choices]
            if bad:
                allowed = ", ".join(map(str, choices))
                raise ValueError(f"{field_label(name)}: {bad[0]!r} is not one of {allowed}")
            return container(converted)
        base = _unwrap_optional(hint)
        if value is not None and base in (int, float) and isinstance(value, str):
            try:
                return base(value)
            except ValueError:
                raise ValueError(f"{field_label(name)} expects a number, got {value!r}") from None
        if base is dict and value is not None and not isinstance(value, dict):
            raise ValueError(f"{field_label(name)} expects a mapping, got {value!r}")
        return value

    def _build(self, values: dict[str, Any]) -> tuple[Any, ...]:
        outputs = []
        for dtype in self.dataclass_types:
            kwargs = {}
            for f in dataclasses.fields(dtype):
                if f.name in self._exclude:
                    continue
                if f.init and f.name in values:
                    kwargs[f.name] = self._coerce(f.name, values[f.name])
                elif f.init and values.get("print_config"):
                    kwargs[f.name] = None  # a required setting not given yet; shown as null
            outputs.append(dtype(**kwargs))
        return tuple(outputs)


def config_dict(*configs: Any, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of one or more config dataclasses, but `exclude`, as one plain mapping (tuples as lists)."""
    skip = set(exclude)
    out: dict[str, Any] = {}
    for cfg in configs:
        for f in dataclasses.fields(cfg):
            if f.name in skip:
                continue
            value = getattr(cfg, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


@dataclasses.dataclass
class OutputOptions:
    """Where a command writes, and how much it says; not part of a run's settings (not saved, not hashed)."""

    out: str = option(help="output directory (a rerun of the same command resumes it)")
    quiet: bool = option(False, "no progress bars")


@dataclasses.dataclass
class ModelArgs:
    """Which model a command loads, in which precision, on which device: the "model" group of flags."""

    model: str = option(
        "smollm2-135m-instruct", "packaged name, local dir, .gguf file or Hub id", group="model"
    )
    dtype: str = option("auto", "auto (bf16), bfloat16, float32, float16", group="model")
    device: str = option("cpu", "cpu, cuda, cuda:N or auto", group="model")

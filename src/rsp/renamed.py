"""Names that changed before rsp's first release, kept only to say so when someone uses one.

rsp keeps no compatibility layer: an old flag, config key, model_arg, method option or method name is an
error, and this table makes that error name the new spelling ("--position was renamed to
--rsp-position"). Nothing reads it to accept the old name.
"""

from __future__ import annotations

# old name -> current name (docs/glossary.md), for settings (config keys and flags, lm-eval model_args,
# method options) and for methods
RENAMED: dict[str, dict[str, str]] = {
    "setting": {
        "position": "rsp_position",
        "stats_rows": "rsp_stats_rows",
        "stats_mean": "rsp_stats_mean",
        "method_extra": "method_options",
        "length": "rsp_length",
        "lengths": "rsp_lengths",
        "alpha": "rsp_scale",
        "alphas": "rsp_scales",
        "rsp_alpha": "rsp_scale",
        "backend": "engine",
        "no_progress": "quiet",
        "rsp_seed": "seed",
        "rsp_method": "method",
        "rsp_soft_prompt": "soft_prompt",
        "rsp_soft_prompt_position": "soft_prompt_position",
        "rsp_noise_alpha": "noise_alpha",
    },
    "method": {"none": "temperature"},
}
_SETTINGS = RENAMED["setting"]


def flag_of(name: str) -> str:
    """The flag of config field `name`: `rsp_length` -> `--rsp-length` (`method_options` is spelled
    `--method-option`, once per KEY=VALUE)."""
    return "--method-option" if name == "method_options" else "--" + name.replace("_", "-")


def renamed_flag(flag: str) -> str | None:
    """ "--position was renamed to --rsp-position" for a renamed flag (also `--position=X`), else None."""
    if not flag.startswith("--"):
        return None
    old = flag.split("=", 1)[0]
    new = _SETTINGS.get(old[2:].replace("-", "_"))
    return f"{old} was renamed to {flag_of(new)}" if new else None


def renamed_key(key: object, what: str = "setting") -> str | None:
    """ "setting 'position' was renamed to 'rsp_position'" for a renamed setting (`what` words which kind of
    name it is: setting, model_arg, method option), else None."""
    new = _SETTINGS.get(str(key).replace("-", "_"))
    return f"{what} {key!r} was renamed to {new!r}" if new else None


def renamed_method(name: str) -> str | None:
    """ "method 'none' was renamed to 'temperature'" for a renamed method, else None."""
    new = RENAMED["method"].get(name)
    return f"method {name!r} was renamed to {new!r}" if new else None

"""The config `rsp eval` saves for one of the map's command lines, as the map's frozen code saves it.

Why here, and not `rsp eval`'s own parser: every step of the map runs on a frozen copy of the code
(`MAP_COMMIT` in experiments/findings.sh), so its command lines keep that code's flag spellings
(`--position`, `--offset`) and its runs' config.json hold that code's keys and defaults. The library's
parser moves on (flags renamed and retired, settings added or removed); the ledger check asks what the
frozen code saved, and must keep giving the same answer whatever the library does next. The defaults
are `EvalConfig`'s at the map's commit; the earlier commits that made some of the runs save the same
keys (the committed ledger entries are the check: `test_findings.py` compares every one of them).
"""

from __future__ import annotations

import shlex

# `EvalConfig.to_dict()` at the map's commit: every key, with the default a command line leaves alone.
# `offset` is left out of a config at 0, and the vLLM parallel sizes at 1 (never set by the map).
EVAL_DEFAULTS: dict[str, object] = {
    "model": "smollm2-135m-instruct",
    "dtype": "auto",
    "device": "cpu",
    "engine": "hf",
    "rsp_length": 4,
    "rsp_scale": 1.0,
    "rsp_position": "after_generation_prompt",
    "rsp_stats_rows": "all",
    "rsp_stats_mean": "scalar",
    "method_options": {},
    "task": "arith",
    "split": "test",
    "limit": 40,
    "offset": 0,
    "arith_steps": 1,
    "arith_max_value": 10,
    "prompt_style": "auto",
    "n": 16,
    "methods": ["temperature", "rsp"],
    "temperature": 0.7,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "max_new_tokens": 128,
    "batch_size": 32,
    "seed": 0,
    "grader_timeout": 5.0,
}
# Keys (and flags) renamed before the map's commit; configs saved before a rename carry the old key.
RENAMED = {
    "position": "rsp_position",
    "stats_rows": "rsp_stats_rows",
    "stats_mean": "rsp_stats_mean",
    "method_extra": "method_options",
}
_OUTPUT = {"out": True, "quiet": False}  # not settings: not saved; True = takes a value


def current_spelling(config: dict) -> dict:
    """A saved eval config with the keys renamed since (`RENAMED`) in their later spelling."""
    return {RENAMED.get(k, k): v for k, v in config.items()}


def eval_config(argv: list[str]) -> dict:
    """The config the frozen `rsp eval` saves for `argv` (its flags, after `rsp eval`).

    Raises ValueError for a flag that command does not have, so a mistyped cell fails here, not in a
    run hours later."""
    config = {
        k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
        for k, v in EVAL_DEFAULTS.items()
    }
    args = list(argv)
    while args:
        flag = args.pop(0)
        if not flag.startswith("--"):
            raise ValueError(f"rsp eval takes no positional argument {flag!r}")
        name, eq, value = flag[2:].partition("=")
        key = RENAMED.get(name.replace("-", "_"), name.replace("-", "_"))
        if key in _OUTPUT:
            if _OUTPUT[key] and not eq:
                args.pop(0)
            continue
        if key == "method_option":
            key = "method_options"
        if key not in config:
            raise ValueError(f"rsp eval (the map's code) has no flag {flag}")
        if not eq:
            if not args:
                raise ValueError(f"{flag} needs a value")
            value = args.pop(0)
        default = EVAL_DEFAULTS[key]
        if key == "method_options":
            option, sep, setting = value.partition("=")
            if not sep:
                raise ValueError(f"--method-option takes KEY=VALUE, got {value!r}")
            options = config["method_options"]
            assert isinstance(options, dict)
            options[option] = setting
        elif key == "methods":
            config[key] = [m for m in value.split(",") if m]
        elif key == "limit":
            config[key] = None if value.lower() in ("none", "null") else int(value)
        else:
            config[key] = type(default)(value)
    if config["offset"] == 0:
        del config["offset"]
    return config


def eval_command_config(command: str) -> dict:
    """`eval_config` of a shell command line `[ENV=...] rsp eval ...` (after any `test -f ... ||` guard)."""
    words = shlex.split(command.split(" || ")[-1])
    while words and "=" in words[0] and not words[0].startswith("-"):
        words.pop(0)  # RSP_DATA_DIR=... and the like: the environment, not flags
    if words[:2] != ["rsp", "eval"]:
        raise ValueError(f"not an rsp eval command: {command}")
    return eval_config(words[2:])

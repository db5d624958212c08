"""The command-config pattern (rsp.config) and the `rsp` dispatcher: flags come from config fields, a
`--config` file plus flag overrides equals the same flags alone (renamed flags: tests/test_renamed.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import yaml

from rsp.cli import COMMANDS, main, resolve
from rsp.commands import compare_parser, eval_parser, report_parser
from rsp.config import ConfigFileError, RSPArgumentParser, config_dict, flag_of, option
from rsp.evaluation import EvalConfig

EVAL_FLAGS = [
    "--model", "tiny", "--engine", "lean", "--task", "arith", "--arith-steps", "2", "--limit", "7",
    "--n", "5", "--methods", "temperature,rsp", "--rsp-length", "3", "--rsp-scale", "0.5",
    "--rsp-position", "prepend", "--method-option", "soft_prompt=x.safetensors", "--method-option",
    "noise_alpha=5", "--temperature", "0.3", "--seed", "11", "--out", "runs/x", "--quiet",
]  # fmt: skip


def test_every_eval_config_field_is_a_flag_of_rsp_eval():
    parser = eval_parser()
    flags = {s for a in parser._actions for s in a.option_strings}
    for f in dataclasses.fields(EvalConfig):
        assert flag_of(f.name) in flags, f.name


def test_flags_set_exactly_the_fields_they_name():
    cfg, output = eval_parser().parse(EVAL_FLAGS)
    assert cfg == dataclasses.replace(
        EvalConfig(),
        model="tiny",
        engine="lean",
        arith_steps=2,
        limit=7,
        n=5,
        methods=("temperature", "rsp"),
        rsp_length=3,
        rsp_scale=0.5,
        rsp_position="prepend",
        method_options={"soft_prompt": "x.safetensors", "noise_alpha": 5},
        temperature=0.3,
        seed=11,
    )
    assert (output.out, output.quiet) == ("runs/x", True)


def _split(argv: list[str], keep: set[str]) -> tuple[dict, list[str]]:
    """Move the flags in `keep` into a config mapping; return it and the remaining flags."""
    config: dict = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        flag, value = argv[i], argv[i + 1] if i + 1 < len(argv) else None
        if flag in keep:
            key = flag[2:].replace("-", "_")
            if key == "method_option":
                k, _, v = value.partition("=")
                config.setdefault("method_options", {})[k] = yaml.safe_load(v)
            elif key == "methods":
                config[key] = value.split(",")
            else:
                config[key] = yaml.safe_load(value)
            i += 2
        elif flag == "--quiet":
            rest.append(flag)
            i += 1
        else:
            rest += [flag, value]
            i += 2
    return config, rest


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_file_plus_an_override_equals_the_flags_alone(tmp_path, suffix):
    moved = {"--model", "--n", "--methods", "--method-option", "--rsp-position", "--seed", "--limit"}
    config, rest = _split(EVAL_FLAGS, moved)
    config["n"] = 99  # overridden on the command line below
    path = tmp_path / f"recipe{suffix}"
    path.write_text(json.dumps(config) if suffix == ".json" else yaml.safe_dump(config))
    from_file = eval_parser().parse(["--config", str(path), *rest, "--n", "5"])
    assert from_file == eval_parser().parse(EVAL_FLAGS)


def test_print_config_is_yaml_that_config_reads_back(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        eval_parser().parse([*EVAL_FLAGS, "--print-config"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    path = tmp_path / "resolved.yaml"
    path.write_text(text)
    assert eval_parser().parse(["--config", str(path)]) == eval_parser().parse(EVAL_FLAGS)


def test_a_run_directorys_config_json_is_a_config_file(tmp_path):
    cfg, _ = eval_parser().parse(EVAL_FLAGS)
    (tmp_path / "config.json").write_text(json.dumps({"kind": "eval", "config": cfg.to_dict()}))
    again, _ = eval_parser().parse(["--config", str(tmp_path / "config.json"), "--out", "o"])
    assert again == cfg


def test_list_flags_take_commas_spaces_and_repeats_and_replace_the_default():
    p = eval_parser()
    for argv in (
        ["--methods", "rsp,rsp-shared"],
        ["--methods", "rsp", "rsp-shared"],
        ["--methods", "rsp", "--methods", "rsp-shared"],
    ):
        cfg, _ = p.parse([*argv, "--out", "o"])
        assert cfg.methods == ("rsp", "rsp-shared")
    (cmp,) = compare_parser().parse(["--arm", "a=r1,x:rsp", "--arm", "b=r2:temperature"])
    assert cmp.arm == ["a=r1,x:rsp", "b=r2:temperature"]  # paths may hold commas: not split


def test_config_file_errors_name_the_file_and_the_setting(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rsp_lenght: 4\n")
    with pytest.raises(ConfigFileError, match=r"bad.yaml: unknown setting 'rsp_lenght'"):
        eval_parser().parse(["--config", str(path), "--out", "o"])
    path.write_text("- a list\n")
    with pytest.raises(ConfigFileError, match="must hold a mapping"):
        eval_parser().parse(["--config", str(path), "--out", "o"])
    with pytest.raises(ConfigFileError, match="cannot read --config"):
        eval_parser().parse(["--config", str(tmp_path / "missing.yaml"), "--out", "o"])


def test_validation_messages_name_the_field_and_its_flag():
    from rsp.evaluation import ConfigError

    with pytest.raises(ConfigError, match=r"rsp_position \(--rsp-position\) must be one of"):
        EvalConfig(rsp_position="middle").validate()


def test_require_names_the_field_and_raises_the_configs_error():
    from rsp.config import require, require_choice
    from rsp.evaluation import ConfigError

    require(True, "n", "must be >= 1, got 0")
    with pytest.raises(ValueError, match=r"^n \(--n\) must be >= 1, got 0$"):
        require(False, "n", "must be >= 1, got 0")
    with pytest.raises(ConfigError, match=r"^engine \(--engine\) must be one of hf, vllm, got 'x'$"):
        require_choice("x", "engine", ("hf", "vllm"), ConfigError)


def test_shared_field_groups_check_the_same_way_in_every_command():
    """`rsp eval` and `rsp serve` take the model, engine and injection fields from the same mixins: one
    check each, raising the command's own error type."""
    from rsp.engines.args import EngineArgs
    from rsp.evaluation import ConfigError
    from rsp.methods import InjectionArgs
    from rsp.server.cli import ServeCommandConfig

    for cls in (EvalConfig, ServeCommandConfig):
        assert issubclass(cls, InjectionArgs) and issubclass(cls, EngineArgs)
    bad = {"rsp_scale": -1.0}
    with pytest.raises(ConfigError, match=r"rsp_scale \(--rsp-scale\) must be >= 0, got -1.0"):
        EvalConfig(**bad).validate()
    with pytest.raises(ValueError, match=r"rsp_scale \(--rsp-scale\) must be >= 0, got -1.0"):
        ServeCommandConfig(**bad).validate()
    with pytest.raises(ValueError, match=r"tensor_parallel_size \(--tensor-parallel-size\) applies to"):
        ServeCommandConfig(tensor_parallel_size=2).validate()
    assert EvalConfig(engine="vllm", data_parallel_size=2).engine_options() == {
        "tensor_parallel_size": 1,
        "data_parallel_size": 2,
    }
    assert ServeCommandConfig(method="rsp").rsp_config() == EvalConfig().rsp_config("rsp")


def test_a_command_words_a_shared_fields_help_and_group_its_own_way():
    from rsp.server.cli import build_parser

    def help_of(parser, flag):
        return next(a.help for a in parser._actions if flag in a.option_strings)

    serve, evaluate = build_parser(), eval_parser()
    assert help_of(serve, "--engine") == "generation engine"
    assert help_of(evaluate, "--engine").startswith("hf: transformers generate")
    assert help_of(serve, "--rsp-length").startswith("L, vectors per RSP (0 = plain sampling)")
    assert help_of(evaluate, "--rsp-length").startswith("L, vectors per RSP (0 = nothing injected)")
    titles = [g.title for g in serve._action_groups]
    assert "injection (defaults for requests without an `rsp` field)" in titles and "injection" not in titles
    eval_titles = [g.title for g in evaluate._action_groups]
    assert eval_titles.index("task") < eval_titles.index("sampling") < eval_titles.index("injection")


def test_two_config_classes_of_one_command_cannot_share_a_field():
    @dataclasses.dataclass
    class A:
        x: int = option(1, "x")

    @dataclasses.dataclass
    class B:
        x: int = option(2, "x again")

    with pytest.raises(ValueError, match="both define 'x'"):
        RSPArgumentParser([A, B])


def test_config_dict_is_plain_data():
    cfg, out = eval_parser().parse(EVAL_FLAGS)
    data = config_dict(cfg, out)
    assert data["methods"] == ["temperature", "rsp"] and data["out"] == "runs/x"
    assert yaml.safe_load(yaml.safe_dump(data)) == data


def test_report_and_compare_parse_their_configs():
    (rep,) = report_parser().parse(["--run", "r"])
    assert rep.run == "r"
    with pytest.raises(SystemExit):
        report_parser().parse([])  # --run is required


def test_every_command_resolves_to_a_function():
    for name in COMMANDS:
        assert callable(resolve(name)), name


def test_unknown_command_suggests_the_close_one(capsys):
    assert main(["evall"]) == 2
    assert "did you mean 'eval'" in capsys.readouterr().err


@pytest.mark.slow
def test_top_level_help_lists_every_command():
    proc = subprocess.run(
        [sys.executable, "-m", "rsp.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    for name in COMMANDS:
        assert name in proc.stdout


def test_print_config_of_a_command_with_excluded_fields_reads_back(tmp_path, capsys):
    from rsp.baselines.cli import build_sweep_parser

    argv = ["--methods", "rsp", "--rsp-lengths", "1,4", "--out", "o"]
    with pytest.raises(SystemExit):
        build_sweep_parser().parse([*argv, "--print-config"])
    text = capsys.readouterr().out
    assert "rsp_length:" not in text.replace("rsp_lengths:", "")  # the grid sets it, not the file
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    assert build_sweep_parser().parse(["--config", str(path)]) == build_sweep_parser().parse(argv)


@pytest.mark.parametrize(
    ("make_parser", "flags", "moved"),
    [
        (report_parser, ["--run", "runs/a"], {"run": "runs/b"}),
        (compare_parser, ["--arm", "a=r1:rsp", "--arm", "b=r2:rsp", "--out", "o"], {"out": "x"}),
    ],
)
def test_report_and_compare_config_file_plus_override_equals_flags(tmp_path, make_parser, flags, moved):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(moved))
    assert make_parser().parse(["--config", str(path), *flags]) == make_parser().parse(flags)


def test_output_into_a_closed_pipe_ends_without_a_traceback():
    """`rsp --help | head -1` style: the reader is gone before rsp writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rsp.cli", "--help"], stdout=write_end, stderr=subprocess.PIPE, timeout=60
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert b"Traceback" not in proc.stderr and b"BrokenPipeError" not in proc.stderr, proc.stderr

"""Names renamed before the first release are errors that name the new spelling (`rsp.renamed`), in every
place a name can be given: a flag, a config-file key, a run directory's config.json, a method, a method
option, an lm-eval model_arg, a TRL recipe flag. None of them is accepted any more."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rsp.commands import eval_parser
from rsp.config import ConfigFileError
from rsp.evaluation import ConfigError, EvalConfig
from rsp.methods import RSPConfig, build_method, get_method, method_descriptions, method_names
from rsp.renamed import RENAMED, renamed_flag, renamed_key
from rsp.runio import RunDirError, prepare_run_dir


def _error_of(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("--backend", "--engine"),
        ("--position", "--rsp-position"),
        ("--stats-rows", "--rsp-stats-rows"),
        ("--stats-mean", "--rsp-stats-mean"),
    ],
)
def test_a_renamed_eval_flag_is_an_error_naming_the_new_flag(old, new, capsys):
    err = _error_of(eval_parser().parse, [old, "x", "--out", "o"], capsys)
    assert f"error: {old} was renamed to {new}" in err
    err = _error_of(eval_parser().parse, [f"{old}=x", "--out", "o"], capsys)
    assert f"error: {old} was renamed to {new}" in err


def test_renamed_flags_of_the_other_commands_are_errors_naming_the_new_flag(capsys):
    from rsp.analysis import cli as analyze_cli
    from rsp.baselines.cli import parse_sweep, parse_train_soft_prompt
    from rsp.server import cli as serve_cli
    from rsp.train import cli as train_cli

    cases = [
        (parse_sweep, ["--alphas", "0.5", "--out", "x"], "--alphas was renamed to --rsp-scales"),
        (parse_sweep, ["--lengths", "3", "--out", "x"], "--lengths was renamed to --rsp-lengths"),
        (parse_train_soft_prompt, ["--length", "6", "--out", "x"], "--length was renamed to --rsp-length"),
        (parse_train_soft_prompt, ["--position", "prepend", "--out", "x"], "--rsp-position"),
        (serve_cli.parse, ["--rsp-seed", "5"], "--rsp-seed was renamed to --seed"),
        (train_cli.parse, ["--out", "o", "--no-progress"], "--no-progress was renamed to --quiet"),
        (
            analyze_cli.parse,
            ["--out", "o", "--position", "prepend"],
            "--position was renamed to --rsp-position",
        ),
    ]
    for parse, argv, message in cases:
        assert message in _error_of(parse, argv, capsys), argv


def test_the_rsp_cli_prints_the_rename_and_exits_2(capsys):
    from rsp.cli import main

    assert _error_of(main, ["eval", "--backend", "hf", "--out", "o"], capsys).endswith(
        "rsp eval: error: --backend was renamed to --engine\n"
    )


def test_a_renamed_config_file_key_is_an_error_naming_the_new_key(tmp_path):
    from rsp.baselines.cli import parse_sweep

    path = tmp_path / "old.yaml"
    path.write_text("position: end_of_user_turn\n")
    with pytest.raises(ConfigFileError, match="setting 'position' was renamed to 'rsp_position'"):
        eval_parser().parse(["--config", str(path), "--out", "o"])
    path.write_text("alphas: [2.0]\n")
    with pytest.raises(ConfigFileError, match="setting 'alphas' was renamed to 'rsp_scales'"):
        parse_sweep(["--config", str(path), "--out", "x"])


def test_a_run_directory_saved_with_a_renamed_key_is_refused_naming_it(tmp_path):
    config = EvalConfig().to_dict()
    old = {("position" if k == "rsp_position" else k): v for k, v in config.items()}
    (tmp_path / "config.json").write_text(json.dumps({"kind": "eval", "config": old, "schema_version": 1}))
    with pytest.raises(RunDirError, match="'position' was renamed to 'rsp_position'; rename it in the file"):
        prepare_run_dir(tmp_path, config, kind="eval")
    with pytest.raises(ConfigError, match="setting 'method_extra' was renamed to 'method_options'"):
        EvalConfig.from_dict({"method_extra": {}})


def test_the_method_none_is_an_error_naming_temperature(tiny_lm):
    assert "none" not in method_names() and "none" not in method_descriptions()
    with pytest.raises(ValueError, match="method 'none' was renamed to 'temperature'"):
        get_method("none")
    with pytest.raises(ValueError, match="method 'none' was renamed to 'temperature'"):
        build_method("none", tiny_lm)
    with pytest.raises(ValueError, match="method 'none' was renamed to 'temperature'"):
        RSPConfig(method="none").validate()
    with pytest.raises(ConfigError, match="method 'none' was renamed to 'temperature'"):
        EvalConfig(methods=("none", "rsp")).validate()


def test_a_renamed_sweep_method_is_an_error():
    from rsp.baselines.sweep import SweepConfig

    with pytest.raises(ConfigError, match="method 'none' was renamed to 'temperature'"):
        SweepConfig(methods=("none", "rsp"), rsp_lengths=(2,), temperatures=(0.7,)).validate()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("rsp_seed", "seed"),
        ("rsp_method", "method"),
        ("rsp_soft_prompt", "soft_prompt"),
        ("rsp_soft_prompt_position", "soft_prompt_position"),
        ("rsp_noise_alpha", "noise_alpha"),
        ("rsp_alpha", "rsp_scale"),
        ("position", "rsp_position"),
    ],
)
def test_a_renamed_lm_eval_model_arg_is_an_error_naming_the_new_one(old, new):
    from rsp.integrations.lm_eval import RSPArgumentError, RSPSettings

    with pytest.raises(RSPArgumentError, match=f"rsp-hf: model_arg '{old}' was renamed to '{new}'"):
        RSPSettings.pop_from({"dtype": "float32", old: "1"}, "rsp-hf")


def test_hflms_own_backend_model_arg_is_not_taken_for_a_renamed_name():
    from rsp.integrations.lm_eval import RSPSettings

    kwargs = {"backend": "causal", "rsp_length": 2}
    assert RSPSettings.pop_from(kwargs, "rsp-hf").config.length == 2
    assert kwargs == {"backend": "causal"}  # left for HFLM


def test_the_recipe_takes_the_glossary_flags_and_names_the_renamed_ones(capsys):
    pytest.importorskip("trl")
    from rsp.integrations.trl_grpo import parse

    base = ["--config", str(Path(__file__).resolve().parents[1] / "configs/recipes/rsp_dapo_arith_cpu.yaml")]
    _, training, _, rsp_args = parse([*base, "--method", "rsp-shared", "--seed", "7"])
    assert rsp_args.to_rsp_config().method == "rsp-shared" and training.seed == 7
    assert "--rsp_seed was renamed to --seed" in _error_of(parse, [*base, "--rsp_seed", "3"], capsys)
    assert "--rsp_method was renamed to --method" in _error_of(parse, [*base, "--rsp_method", "x"], capsys)


def test_the_python_names_of_before_the_renames_are_gone():
    import rsp
    import rsp.methods

    assert not hasattr(rsp, "MethodOptions") and not hasattr(rsp.methods, "MethodOptions")
    with pytest.raises(ModuleNotFoundError):
        __import__("rsp.backends")
    with pytest.raises(TypeError):
        RSPConfig(options={"noise_alpha": 3})  # type: ignore[call-arg]


def test_every_renamed_setting_has_a_message_and_no_current_name_is_in_the_table():
    """The table only produces errors: a name in it must not be a current setting of any command."""
    from rsp.baselines.sweep import SweepGrid
    from rsp.config import OutputOptions
    from rsp.server.cli import ServeCommandConfig

    current = {
        f
        for cls in (EvalConfig, SweepGrid, OutputOptions, ServeCommandConfig)
        for f in cls.__dataclass_fields__
    }
    assert not set(RENAMED["setting"]) & current
    assert set(RENAMED["setting"].values()) <= current | {
        "method", "soft_prompt", "soft_prompt_position", "noise_alpha", "rsp_length", "rsp_lengths",
    }  # fmt: skip
    assert renamed_flag("--rsp-position") is None and renamed_key("rsp_position") is None

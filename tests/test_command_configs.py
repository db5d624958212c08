"""`rsp serve`, `rsp train` and `rsp analyze` parse their flags from config dataclasses (`rsp.config`):
a `--config` file plus overrides equals the same settings as flags, and `--print-config` writes YAML that
`--config` reads back to the same settings."""

from __future__ import annotations

import json

import pytest
import yaml

from rsp.analysis import cli as analyze_cli
from rsp.server import cli as serve_cli
from rsp.train import cli as train_cli
from rsp.train.config import DAPOConfig, DAPOConfigError

# (module, settings as a config file, one override flag, the same settings as flags alone)
CASES = {
    "serve": (
        serve_cli,
        {"model": "m", "rsp_length": 2, "rsp_position": "prepend", "seed": 7, "port": 9000},
        ["--rsp-scale", "0.5"],
        [
            "--model",
            "m",
            "--rsp-length",
            "2",
            "--rsp-position",
            "prepend",
            "--seed",
            "7",
            "--port",
            "9000",
            "--rsp-scale",
            "0.5",
        ],
    ),
    "train": (
        train_cli,
        {
            "out": "runs/x",
            "steps": 7,
            "rsp_length": 8,
            "lr": "1e-4",
            "lora_target_modules": ["q_proj", "v_proj"],
        },
        ["--no-lora"],
        [
            "--out",
            "runs/x",
            "--steps",
            "7",
            "--rsp-length",
            "8",
            "--lr",
            "1e-4",
            "--lora-target-modules",
            "q_proj,v_proj",
            "--no-lora",
        ],
    ),
    "analyze": (
        analyze_cli,
        {"out": "runs/a", "k": 6, "methods": ["temperature", "rsp"], "rsp_length": 2, "attention": False},
        ["--n", "3"],
        [
            "--out",
            "runs/a",
            "--k",
            "6",
            "--methods",
            "temperature,rsp",
            "--rsp-length",
            "2",
            "--no-attention",
            "--n",
            "3",
        ],
    ),
}


def _write(path, data) -> str:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("command", sorted(CASES))
def test_config_file_plus_override_equals_the_flags_alone(command, tmp_path):
    module, settings, override, flags = CASES[command]
    from_file = module.parse(["--config", _write(tmp_path / "c.yaml", settings), *override])
    assert from_file == module.parse(flags)


@pytest.mark.parametrize("command", sorted(CASES))
def test_print_config_is_yaml_that_config_reads_back(command, tmp_path, capsys):
    module, _, _, flags = CASES[command]
    with pytest.raises(SystemExit) as exit_:
        module.parse([*flags, "--print-config"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert module.parse(["--config", _write(tmp_path / "p.yaml", yaml.safe_load(printed))]) == module.parse(
        flags
    )


def test_a_flag_overrides_the_config_file(tmp_path):
    path = _write(tmp_path / "c.yaml", {"rsp_length": 2, "method_options": {"soft_prompt": "a.safetensors"}})
    (cfg,) = serve_cli.parse(["--config", path, "--rsp-length", "0", "--method-option", "noise_alpha=5"])
    assert cfg.rsp_length == 0 and cfg.method_options == {"soft_prompt": "a.safetensors", "noise_alpha": 5}


# ---------------------------------------------------------------- rsp serve
def test_serve_rsp_config_carries_the_injection_defaults():
    (cfg,) = serve_cli.parse(["--method", "rsp-fixed", "--rsp-length", "2", "--method-option", "x=1"])
    rsp = cfg.rsp_config()
    assert (rsp.method, rsp.length, rsp.position) == ("rsp-fixed", 2, "after_generation_prompt")
    assert rsp.method_options == {"x": 1}


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--rsp-length", "-1"], "rsp_length (--rsp-length)"),
        (["--method", "bogus"], "method (--method)"),
        (["--tensor-parallel-size", "2"], "tensor_parallel_size (--tensor-parallel-size)"),
    ],
)
def test_serve_bad_settings_name_the_field_and_flag(argv, named):
    with pytest.raises(ValueError, match=rf"^{named.replace('(', '[(]').replace(')', '[)]')}"):
        serve_cli.parse(argv)


# ---------------------------------------------------------------- rsp train
def test_train_reads_a_run_directorys_config_json_and_flags_override_it(tmp_path):
    cfg = DAPOConfig(steps=7, rsp_length=8, rsp_position="prepend")
    record = {"kind": "train", "config": cfg.to_dict(), "config_hash": "x", "schema_version": 1}
    (tmp_path / "config.json").write_text(json.dumps(record), encoding="utf-8")
    parsed, output, options = train_cli.parse(
        ["--config", str(tmp_path / "config.json"), "--out", str(tmp_path), "--save-merged"]
    )
    assert parsed == cfg and parsed.to_dict() == cfg.to_dict()  # the same run: it resumes
    assert (output.out, output.quiet, options.save_merged) == (str(tmp_path), False, True)
    parsed, _, _ = train_cli.parse(["--config", str(tmp_path / "config.json"), "--out", "o", "--steps", "9"])
    assert (parsed.steps, parsed.rsp_length) == (9, 8)


def test_train_bare_dapo_config_json_still_reads(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(DAPOConfig(steps=7, rsp_length=8).to_dict()))
    parsed, _, _ = train_cli.parse(["--config", str(tmp_path / "c.json"), "--out", "o", "--rsp-length", "0"])
    assert (parsed.steps, parsed.rsp_length) == (7, 0)


def test_train_trl_args_take_a_json_object_and_key_values_merged_over_the_file(tmp_path):
    path = _write(tmp_path / "c.yaml", {"trainer": "trl", "trl_args": {"bf16": True}})
    cfg, _, _ = train_cli.parse(
        [
            "--config",
            path,
            "--out",
            "o",
            "--trl-args",
            '{"gradient_accumulation_steps": 2}',
            "--trl-args",
            'report_to=["tensorboard"]',
        ]
    )
    assert cfg.trl_args == {"bf16": True, "gradient_accumulation_steps": 2, "report_to": ["tensorboard"]}


def test_train_validation_names_the_field_and_its_flag():
    with pytest.raises(DAPOConfigError, match=r"^group_size \(--group-size\) must be >= 2"):
        train_cli.parse(["--out", "o", "--group-size", "1"])
    with pytest.raises(DAPOConfigError, match=r"^trl_args \(--trl-args\) apply to --trainer trl only"):
        train_cli.parse(["--out", "o", "--trl-args", "bf16=true"])


# ---------------------------------------------------------------- rsp analyze
def test_analyze_live_mode_has_its_own_defaults():
    cfg, evaluation = analyze_cli.parse(["--out", "o"])
    assert (evaluation.n, evaluation.methods, evaluation.limit) == (
        8,
        ("temperature", "rsp", "rsp-fixed"),
        12,
    )
    assert (cfg.k, cfg.attention, cfg.run) == (32, True, None)


def test_analyze_live_mode_needs_out_and_k_is_checked():
    with pytest.raises(ValueError, match="needs --out"):
        analyze_cli.parse([])
    with pytest.raises(ValueError, match=r"k \(--k\) must be >= 1"):
        analyze_cli.parse(["--run", "r", "--k", "0"])
    cfg, _ = analyze_cli.parse(["--run", "r"])
    assert str(cfg.output_dir()) == "r/analysis"


# ---------------------------------------------------------------- saved settings
# What `EvalConfig` / `DAPOConfig` saved as a run's config.json before their field groups became shared
# mixins (`EngineArgs`, `InjectionArgs`, `ModelArgs`): the same keys, values and hash, so runs written then
# still resume.
EVAL_KEYS = [
    "arith_max_value",
    "arith_steps",
    "batch_size",
    "common_random_numbers",
    "device",
    "dtype",
    "engine",
    "grader_timeout",
    "limit",
    "max_new_tokens",
    "method_options",
    "methods",
    "min_p",
    "model",
    "n",
    "prompt_style",
    "rsp_length",
    "rsp_position",
    "rsp_scale",
    "rsp_stats_mean",
    "rsp_stats_rows",
    "seed",
    "split",
    "task",
    "temperature",
    "top_k",
    "top_p",
]
DAPO_KEYS = [
    "arith_max_value",
    "arith_steps",
    "beta",
    "checkpoint_every",
    "device",
    "dtype",
    "epsilon_high",
    "epsilon_low",
    "grader_timeout",
    "group_size",
    "lora",
    "lora_alpha",
    "lora_dropout",
    "lora_r",
    "lora_target_modules",
    "lr",
    "mask_truncated",
    "max_extra_rounds",
    "max_grad_norm",
    "max_new_tokens",
    "micro_batch_size",
    "model",
    "overlong_buffer",
    "overlong_penalty",
    "prompts_per_step",
    "reward_correct",
    "reward_wrong",
    "rsp_length",
    "rsp_position",
    "rsp_scale",
    "seed",
    "steps",
    "task",
    "temperature",
    "train_problems",
    "trainer",
    "updates_per_batch",
    "weight_decay",
]


def test_saved_eval_settings_keep_their_keys_and_hash():
    from rsp.evaluation import EvalConfig
    from rsp.runio import config_hash

    saved = EvalConfig().to_dict()
    assert sorted(saved) == EVAL_KEYS
    assert config_hash(saved) == "5c728afa4fa3bf5c"
    vllm = dict(engine="vllm", tensor_parallel_size=2, rsp_position="prepend")
    vllm_options = {"method_options": {"soft_prompt": "a.safetensors"}}
    assert config_hash(EvalConfig(**vllm, **vllm_options).to_dict()) == "ff2903a59521153e"
    assert EvalConfig.from_dict(saved) == EvalConfig()
    # Runs saved before common random numbers existed have no such key; with the setting off (as a resume
    # of such a run sets it) today's config saves exactly their keys and hash, so they still resume.
    old = EvalConfig(common_random_numbers=False).to_dict()
    assert sorted(old) == [k for k in EVAL_KEYS if k != "common_random_numbers"]
    assert config_hash(old) == "cf834e29b8d7a624"
    old_vllm = EvalConfig(common_random_numbers=False, **vllm, **vllm_options).to_dict()
    assert config_hash(old_vllm) == "e64b111e241fb1b7"


def test_saved_dapo_settings_keep_their_keys_and_hash():
    from rsp.runio import config_hash

    saved = DAPOConfig().to_dict()
    assert sorted(saved) == DAPO_KEYS
    assert config_hash(saved) == "8be106a5433d83f3"

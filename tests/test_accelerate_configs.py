"""The shipped accelerate configs load with accelerate's own config parser and say what they claim."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


@pytest.mark.parametrize(
    "name,kind", [("multi_gpu.yaml", "MULTI_GPU"), ("zero3.yaml", "DEEPSPEED"), ("fsdp2.yaml", "FSDP")]
)
def test_config_parses_with_accelerate(name, kind):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(CONFIGS / name))
    assert str(cfg.distributed_type).endswith(kind)
    assert cfg.num_processes >= 2 and cfg.mixed_precision == "bf16" and not cfg.use_cpu
    if kind == "DEEPSPEED":
        assert cfg.deepspeed_config["zero_stage"] == 3
    if kind == "FSDP":
        assert cfg.fsdp_config["fsdp_version"] == 2

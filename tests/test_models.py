"""Model loading: specific errors for unusable models, packaged names, GGUF cache."""

from __future__ import annotations

import pytest
import torch

from rsp.models import ModelLoadError, load_model, wrap_model
from rsp.models.loading import resolve_model_dir


class NoEmbedsModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids):
        return self.emb(input_ids)


def test_model_without_inputs_embeds_is_refused(tiny_tokenizer):
    with pytest.raises(ModelLoadError, match="does not accept inputs_embeds"):
        wrap_model(NoEmbedsModel(), tiny_tokenizer)


def test_unknown_names_and_paths_get_specific_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown model 'smollm3'"):
        resolve_model_dir("smollm3", tmp_path)
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_model_dir(str(tmp_path / "missing.gguf"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model_dir(str(tmp_path / "empty"), tmp_path)
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelLoadError, match="could not read GGUF file"):
        resolve_model_dir(str(bad), tmp_path / "cache")
    assert not any((tmp_path / "cache" / "models").glob("gguf-broken*"))  # no half-written cache left


def test_bad_device_and_dtype(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model(str(tiny_model_dir), dtype="int3")
    with pytest.raises(ModelLoadError, match="unknown device"):
        load_model(str(tiny_model_dir), device="tpu")


def test_local_directory_loads_in_requested_dtype(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), dtype="bfloat16")
    assert lm.dtype == torch.bfloat16 and lm.source.startswith("local:")
    assert 2 in lm.stop_token_ids


@pytest.mark.real_model
def test_packaged_smollm2_loads_from_cache_with_stats(smollm2):
    assert smollm2.source == "packaged:smollm2-135m-instruct"
    assert smollm2.embed_scale == 1.0 and smollm2.hidden_size == 576
    stats = smollm2.embedding_stats()
    assert stats.std == pytest.approx(0.1356, rel=0.01)  # the table's measured entrywise std
    assert smollm2.tokenizer.convert_tokens_to_ids("<|im_end|>") in smollm2.stop_token_ids
    assert (smollm2.stats_cache_dir / "rsp-stats" / "all-scalar.safetensors").is_file()
    assert smollm2.location == str(smollm2.stats_cache_dir)  # the converted folder an engine like vLLM loads
    # Engines that load every top-level *.safetensors as a weight shard (vLLM) must see only weights.
    assert sorted(p.name for p in smollm2.stats_cache_dir.glob("*.safetensors")) == ["model.safetensors"]


def test_stats_cache_moves_a_legacy_top_level_file_out_of_the_weights_folder(tmp_path):
    from rsp.models.loading import stats_cache_path

    legacy = tmp_path / "rsp-stats-all-scalar.safetensors"
    legacy.write_bytes(b"stats")
    path = stats_cache_path(tmp_path, "all", "scalar")
    assert path == tmp_path / "rsp-stats" / "all-scalar.safetensors"
    assert path.read_bytes() == b"stats" and not legacy.exists()


def test_native_bf16_is_the_avx512_bf16_or_amx_flag_not_avx512_alone(monkeypatch):
    """oneDNN reports bf16 support on any AVX-512 CPU (Skylake, Cascade Lake emulate it), so the
    /proc/cpuinfo flags decide; only where there are none to read does oneDNN's answer stand."""
    from rsp.models.loading import cpu_has_native_bf16, native_bf16_flags

    def cpuinfo(flags: str) -> str:
        return f"processor\t: 0\nmodel name\t: test\nflags\t\t: fpu sse2 avx2 {flags}\n\nprocessor\t: 1\n"

    assert not cpu_has_native_bf16(cpuinfo("avx512f avx512bw avx512_vnni")), "Cascade Lake: emulated"
    assert not cpu_has_native_bf16(cpuinfo("")), "AVX2 only"
    assert cpu_has_native_bf16(cpuinfo("avx512f avx512_bf16"))
    assert cpu_has_native_bf16(cpuinfo("avx512f amx_tile amx_bf16"))
    assert native_bf16_flags(cpuinfo("avx512_bf16 amx_bf16")) == ["avx512_bf16", "amx_bf16"]
    assert native_bf16_flags("processor\t: 0\nFeatures\t: fp asimd bf16\n") is None, "not x86: no flags"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert not cpu_has_native_bf16("Features\t: fp asimd\n"), "no flags line: oneDNN's answer"


def test_bf16_on_a_cpu_without_native_bf16_warns_once_and_names_the_fast_dtype(monkeypatch, caplog):
    import logging

    import rsp.models.loading as loading

    cpu = torch.device("cpu")
    monkeypatch.setattr(loading, "_WARNED_BF16", False)
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)
    assert not loading.warn_if_slow_bf16(torch.bfloat16, cpu), "native bf16: nothing to say"
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: False)
    assert not loading.warn_if_slow_bf16(torch.float32, cpu)
    assert not loading.warn_if_slow_bf16(torch.bfloat16, torch.device("meta"))  # not a CPU
    with caplog.at_level(logging.WARNING, logger="rsp.models.loading"):
        assert loading.warn_if_slow_bf16(torch.bfloat16, cpu)
        assert not loading.warn_if_slow_bf16(torch.bfloat16, cpu), "once per process"
    assert len(caplog.records) == 1 and "--dtype float32" in caplog.records[0].getMessage()

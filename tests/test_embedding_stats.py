"""RSP statistics and lookups from the checkpoint's embedding tensor alone equal the loaded model's.

Why it matters: the vLLM engine loads the weights itself, and `EmbeddingModel` replaces the full HF copy
beside it (issue #12). Any difference here (dtype rounding, Gemma's scale, the wrong tensor) would make
RSP draws on vLLM differ from the same run on the HF engine.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_char_tokenizer, build_tiny_llama
from safetensors.torch import save_file

from rsp.models import EmbeddingModel, ModelLoadError, embedding_stats, load_embedding_model, load_model
from rsp.models import embeddings as emb_mod


def _untied_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(cfg).eval()


def _gemma_48():
    """Gemma 3 with hidden size 48: sqrt(48) is not exact in bf16 (6.9375), unlike the usual tiny 64 (8.0)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(2)
    cfg = Gemma3TextConfig(
        vocab_size=128,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=16,
        layer_types=["full_attention"],
        bos_token_id=1,
        eos_token_id=[2, 3],
        pad_token_id=0,
        max_position_embeddings=128,
    )
    return Gemma3ForCausalLM(cfg).eval()


BUILDERS = {
    "tied": (lambda: build_tiny_llama(vocab_size=128), {}),
    "sharded": (lambda: build_tiny_llama(vocab_size=128), {"max_shard_size": "20KB"}),
    "untied": (_untied_llama, {}),
    "gemma": (_gemma_48, {}),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """kind -> (folder, the model loaded from it by load_model in bf16)."""
    out = {}
    for kind, (build, save_kwargs) in BUILDERS.items():
        folder = tmp_path_factory.mktemp(kind)
        build().save_pretrained(str(folder), **save_kwargs)
        build_char_tokenizer().save_pretrained(str(folder))
        out[kind] = (folder, load_model(str(folder)))
    return out


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize(("rows", "mean_mode"), [("all", "scalar"), ("tokens", "per_dim")])
def test_stats_from_the_checkpoint_equal_the_loaded_models(checkpoints, kind, rows, mean_mode):
    folder, lm = checkpoints[kind]
    got = embedding_stats(str(folder), rows=rows, mean_mode=mean_mode)
    want = lm.embedding_stats(rows=rows, mean_mode=mean_mode)
    assert got.rows_used == want.rows_used and got.dim == want.dim
    assert got.embed_scale == want.embed_scale
    assert torch.allclose(got.mean, want.mean, rtol=1e-6, atol=1e-9)
    assert got.std == pytest.approx(want.std, rel=1e-6)
    if rows == "tokens":
        assert got.rows_used == len(lm.tokenizer) < lm.vocab_rows, "rows='tokens' must drop the padding rows"


def test_the_fixtures_cover_what_they_claim(checkpoints):
    """The sharded folder has an index over several shards, the untied one a distinct lm_head, and the
    Gemma one a scale that bf16 rounds (so a float sqrt(48) instead of the model's would show)."""
    sharded = checkpoints["sharded"][0]
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    untied = checkpoints["untied"][1].model
    assert not torch.equal(untied.lm_head.weight, untied.get_input_embeddings().weight)
    gemma = checkpoints["gemma"][1]
    assert gemma.embed_scale != 1.0 and abs(gemma.embed_scale - 48**0.5) > 1e-3


def test_gemma_scale_is_applied_in_each_dtype(checkpoints):
    folder, _ = checkpoints["gemma"]
    for dtype in ("float32", "float16"):
        want = load_model(str(folder), dtype=dtype).embedding_stats()
        got = embedding_stats(str(folder), dtype=dtype)
        assert got.embed_scale == want.embed_scale and got.std == pytest.approx(want.std, rel=1e-6)


@pytest.mark.parametrize("kind", ["tied", "untied", "gemma"])
def test_embedding_model_matches_the_loaded_model(checkpoints, kind):
    folder, lm = checkpoints[kind]
    em = load_embedding_model(str(folder))
    ids = torch.tensor([[0, 1, 5, 17, 99, 127], [3, 3, 2, 64, 100, 8]])
    assert torch.equal(em.embed(ids), lm.embed(ids))
    assert em.embed(ids).dtype == lm.embed(ids).dtype == torch.bfloat16
    assert (em.embed_scale, em.stop_token_ids, em.pad_token_id, em.hidden_size, em.vocab_rows, em.dtype) == (
        lm.embed_scale,
        lm.stop_token_ids,
        lm.pad_token_id,
        lm.hidden_size,
        lm.vocab_rows,
        lm.dtype,
    )
    assert em.device == torch.device("cpu") and em.has_chat_template == lm.has_chat_template
    assert em.placeholder_id == lm.placeholder_id
    assert (
        em.location == lm.location and em.config.max_position_embeddings == lm.config.max_position_embeddings
    )
    got, want = em.embedding_stats(rows="tokens"), lm.embedding_stats(rows="tokens")
    assert torch.equal(got.mean, want.mean) and got.std == want.std and got.rows_used == want.rows_used


def test_stop_ids_fall_back_to_the_config_without_a_generation_config(tmp_path):
    """transformers derives generation_config from config.json when the folder has none; so must we."""
    model = _gemma_48()
    model.save_pretrained(str(tmp_path))
    build_char_tokenizer().save_pretrained(str(tmp_path))
    (tmp_path / "generation_config.json").unlink()
    lm = load_model(str(tmp_path))
    assert load_embedding_model(str(tmp_path)).stop_token_ids == lm.stop_token_ids
    assert 3 in lm.stop_token_ids  # from config.json's eos_token_id list


class ReadSpy:
    """Stands in for safetensors.safe_open and records every tensor read: (how, key)."""

    reads: list[tuple[str, str]] = []
    real = staticmethod(emb_mod.safe_open)

    def __init__(self, *args, **kwargs):
        self.inner = self.real(*args, **kwargs)

    def __enter__(self):
        handle, reads = self.inner.__enter__(), self.reads

        class Handle:
            def __getattr__(self, name):
                return getattr(handle, name)

            def get_tensor(self, key):
                reads.append(("tensor", key))
                return handle.get_tensor(key)

            def get_slice(self, key):
                inner = handle.get_slice(key)

                class Slice:  # get_shape reads the header only; indexing reads rows
                    def __getattr__(self, name):
                        return getattr(inner, name)

                    def __getitem__(self, index):
                        reads.append(("slice", key))
                        return inner[index]

                return Slice()

        return Handle()

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)


@pytest.fixture
def read_spy(monkeypatch):
    ReadSpy.reads = []
    monkeypatch.setattr(emb_mod, "safe_open", ReadSpy)
    return ReadSpy.reads


def test_only_the_embedding_tensor_is_read(checkpoints, read_spy):
    for kind in ("sharded", "untied"):
        embedding_stats(str(checkpoints[kind][0]))
        load_embedding_model(str(checkpoints[kind][0])).embed(torch.tensor([1, 2]))
    assert {key for _, key in read_spy} == {"model.embed_tokens.weight"}
    assert [how for how, _ in read_spy].count("tensor") == 4  # one full read per call, no more


def test_the_table_is_not_held_until_something_needs_it(checkpoints, read_spy):
    """vLLM's mixed prompts need only the statistics, the hidden size and the dtype: building them must not
    read the table (the point of issue #12), and fitting statistics must not keep it."""
    from conftest import chat_prompt

    from rsp.core import RandomSoftPrompt
    from rsp.engines.vllm import build_requests

    em = load_embedding_model(str(checkpoints["gemma"][0]))
    assert read_spy == [] and em._table is None
    injection = RandomSoftPrompt(em.embedding_stats(), 3)
    requests = build_requests(
        em, [chat_prompt(em, "hi")] * 2, injection, [1, 2], decode_seed=0, prompt_mode="mixed"
    )
    assert requests[0].prompt_embeds.shape[1] == em.hidden_size and em._table is None
    assert em.embed_scale == checkpoints["gemma"][1].embed_scale  # from a 64-row slice, same number
    assert ("tensor", "model.embed_tokens.weight") in read_spy  # the fit read it, transiently
    em.embed(torch.tensor([5]))
    assert em._table is not None


def _write_checkpoint(folder, tensors: dict[str, torch.Tensor], config: dict | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps(config or {"model_type": "llama", "vocab_size": 8, "hidden_size": 4})
    )
    return folder


def test_embedding_key_is_found_by_its_ending_and_narrowed_by_shape(tmp_path):
    wrapped = _write_checkpoint(
        tmp_path / "a",
        {"model.language_model.embed_tokens.weight": torch.ones(8, 4), "lm_head.weight": torch.zeros(8, 4)},
    )
    assert emb_mod.find_embedding_tensor(str(wrapped))[1] == "model.language_model.embed_tokens.weight"
    two = _write_checkpoint(
        tmp_path / "b",
        {
            "model.language_model.embed_tokens.weight": torch.ones(8, 4),
            "model.vision_tower.embed_tokens.weight": torch.ones(3, 5),
        },
    )
    config = {"model_type": "x", "text_config": {"vocab_size": 8, "hidden_size": 4}}
    assert emb_mod.find_embedding_tensor(str(two), config)[1] == "model.language_model.embed_tokens.weight"
    gpt2 = _write_checkpoint(
        tmp_path / "c",
        {"transformer.wte.weight": torch.ones(8, 4), "transformer.wpe.weight": torch.ones(16, 4)},
    )
    assert emb_mod.find_embedding_tensor(str(gpt2))[1] == "transformer.wte.weight"


def test_ambiguous_embedding_keys_are_refused_with_the_candidates(tmp_path):
    folder = _write_checkpoint(
        tmp_path, {"a.embed_tokens.weight": torch.ones(8, 4), "b.embed_tokens.weight": torch.ones(8, 4)}
    )
    with pytest.raises(
        ModelLoadError, match=r"a\.embed_tokens\.weight, b\.embed_tokens\.weight.*tensor_name"
    ):
        emb_mod.find_embedding_tensor(str(folder), {"vocab_size": 8, "hidden_size": 4})
    assert (
        emb_mod.find_embedding_tensor(str(folder), tensor_name="b.embed_tokens.weight")[1]
        == "b.embed_tokens.weight"
    )


def test_a_checkpoint_without_an_embedding_tensor_is_named_in_the_error(tmp_path):
    folder = _write_checkpoint(tmp_path / "m", {"lm_head.weight": torch.ones(8, 4)})
    with pytest.raises(ModelLoadError, match=r"no input-embedding tensor in .*m/model\.safetensors"):
        embedding_stats(str(folder))
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    (bare / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"no safetensors weights.*pytorch_model\.bin"):
        embedding_stats(str(bare))


def test_converted_models_reuse_the_on_disk_stats_cache(checkpoints, tmp_path, monkeypatch):
    """Packaged and GGUF models keep fitted stats in rsp-stats/; the second call must not read the table."""
    import shutil

    folder = tmp_path / "converted"
    shutil.copytree(checkpoints["tied"][0], folder)
    monkeypatch.setattr(emb_mod, "resolve_model_dir", lambda spec, cache=None: (str(folder), "packaged:tiny"))
    first = embedding_stats("tiny")
    assert (folder / "rsp-stats" / "all-scalar.safetensors").is_file()

    def no_reading(*args, **kwargs):
        raise AssertionError("the cached stats should have been used")

    monkeypatch.setattr(emb_mod.EmbeddingTensor, "read", no_reading)
    again = embedding_stats("tiny")
    assert again.std == first.std and torch.equal(again.mean, first.mean)


def test_methods_build_the_same_injections_from_the_embedding_model(checkpoints):
    from rsp.methods import RSPConfig, build_method

    folder, lm = checkpoints["gemma"]
    em = load_embedding_model(str(folder))
    seeds = [11, 12]
    for name in ("rsp", "rsp-fixed", "mean-vector", "token-rows", "token-string"):
        for rows in ("all", "tokens"):
            options = RSPConfig(length=3, stats_rows=rows)
            got, want = (
                build_method(name, em, options).rows(seeds),
                build_method(name, lm, options).rows(seeds),
            )
            assert torch.equal(got, want), (name, rows)
    noise = build_method("embed-noise", em)
    assert noise.dim == lm.hidden_size and noise.embed_scale == lm.embed_scale


def test_load_for_engine_gives_vllm_the_table_only(checkpoints):
    from rsp.engines import load_for_engine
    from rsp.models import LoadedModel

    folder = str(checkpoints["tied"][0])
    assert isinstance(load_for_engine(folder, "vllm"), EmbeddingModel)
    assert isinstance(load_for_engine(folder, "hf", dtype="float32"), LoadedModel)
    with pytest.raises(ValueError, match="unknown engine"):
        load_for_engine(folder, "tgi")

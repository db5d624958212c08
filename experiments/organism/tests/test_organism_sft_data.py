"""The organism's SFT data asks the model exactly what `rsp eval` asks it, and trains only the answer.

If the SFT prompts drifted from the eval prompts (another template, a missing system turn, a different
split of head and tail), the organism would be measured on inputs it never saw; these tests run the real
`rsp eval` command on a tiny random model (built in-process, no real weights) and compare token ids.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from organism_data import IGNORE, build_example, end_of_turn_id, target_text, train_examples  # noqa: E402
from organism_sft import target_loss  # noqa: E402

from rsp.tasks import load_task  # noqa: E402
from rsp.tasks.prompts import PromptBuilder  # noqa: E402


def _char_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<|im_end|>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + [chr(i) for i in range(32, 127)] + ["\n"])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=["<|im_end|>"],
    )  # fmt: skip
    # SmolLM2's template shape: a default system turn, <|im_end|> closing every turn
    tok.chat_template = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a bot<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tok


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = _char_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        max_position_embeddings=1024,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-organism")
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def _eval_prompts(tiny_dir: Path, out: Path, steps: int, monkeypatch) -> list[tuple[int, ...]]:
    """The token ids the real `rsp eval` command feeds the engine, in problem order."""
    from rsp import cli, generation

    fed: list[tuple[int, ...]] = []
    original = generation.Generator.run

    def spy(self, prompts, *args, **kwargs):
        fed.extend(tuple(p.ids) for p in prompts)
        return original(self, prompts, *args, **kwargs)

    monkeypatch.setattr(generation.Generator, "run", spy)
    argv = ["eval", "--model", str(tiny_dir), "--task", "arith", "--arith-steps", str(steps),
            "--arith-max-value", "20", "--limit", "3", "--n", "1", "--methods", "temperature",
            "--max-new-tokens", "4", "--engine", "hf", "--dtype", "float32", "--quiet",
            "--out", str(out)]  # fmt: skip
    try:
        cli.main(argv)
    except SystemExit as exc:
        assert not exc.code
    return fed


def test_sft_prompt_is_the_prompt_rsp_eval_feeds(tiny_dir, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    fed = _eval_prompts(tiny_dir, tmp_path / "run", 2, monkeypatch)
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    task = load_task("arith", split="test", arith_steps=2, arith_max_value=20, limit=3, seed=0)
    builder = PromptBuilder.for_task(tok, task, style="auto")
    stop = end_of_turn_id(tok)
    examples = [build_example(builder, p, stop) for p in task.problems]
    assert fed == [e.input_ids[: e.prompt_len] for e in examples]
    # the eval run graded these very problems (same ids), so the comparison is problem for problem
    rows = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [r["problem_id"] for r in rows] == [p.id for p in task.problems]


def test_loss_mask_covers_the_target_and_the_stop_token_only(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    stop = end_of_turn_id(tok)
    assert tok.convert_ids_to_tokens([stop]) == ["<|im_end|>"]
    task = load_task("arith", split="train", arith_steps=3, arith_max_value=20, limit=2, seed=1)
    builder = PromptBuilder.for_task(tok, task, style="auto")
    for p in task.problems:
        e = build_example(builder, p, stop)
        target = tok(target_text(p), add_special_tokens=False)["input_ids"]
        assert e.labels[: e.prompt_len] == (IGNORE,) * e.prompt_len
        assert e.labels[e.prompt_len :] == (*target, stop)
        assert e.input_ids[e.prompt_len :] == e.labels[e.prompt_len :]
        assert tok.decode(e.labels[e.prompt_len : -1]).endswith(f"\\boxed{{{p.answer}}}.")


def test_train_examples_skip_excluded_questions_and_are_a_fixed_order(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    first = train_examples(tok, (1, 2), 20, 20, 1, set())
    assert [e.problem_id for e in first] == [
        e.problem_id for e in train_examples(tok, (1, 2), 20, 20, 1, set())
    ]
    banned = load_task("arith", split="train", arith_steps=1, arith_max_value=20, limit=1, seed=1).problems[0]
    kept = train_examples(tok, (1, 2), 20, 20, 1, {banned.question})
    assert banned.id not in {e.problem_id for e in kept} and len(kept) == len(first) - 1


def test_target_loss_ignores_prompt_tokens(tiny_dir):
    """Changing a prompt token's label would change nothing (it is IGNORE); changing a target token's does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    task = load_task("arith", split="train", arith_steps=2, arith_max_value=20, limit=1, seed=1)
    e = build_example(PromptBuilder.for_task(tok, task), task.problems[0], end_of_turn_id(tok))
    ids = torch.tensor([e.input_ids])
    mask = torch.ones_like(ids)
    labels = torch.tensor([e.labels])
    loss, n = target_loss(model, ids, labels, mask)
    assert n == len(e.input_ids) - e.prompt_len
    logits = model(input_ids=ids, attention_mask=mask).logits[0, :-1]
    want = torch.nn.functional.cross_entropy(logits[e.prompt_len - 1 :], ids[0, e.prompt_len :])
    torch.testing.assert_close(loss, want)

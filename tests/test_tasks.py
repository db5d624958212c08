"""Tasks: synthetic problems, benchmark loaders with specific errors, prompt construction."""

from __future__ import annotations

import re

import pytest

from rsp.tasks import PromptBuilder, TaskError, arith_task, load_task
from rsp.tasks.datasets import find_data_file, read_jsonl_problems


def test_arith_is_deterministic_and_answers_are_right():
    a = arith_task(split="test", n=50, steps=3, max_value=30, seed=4)
    b = arith_task(split="test", n=50, steps=3, max_value=30, seed=4)
    assert a.problems == b.problems
    for p in a.problems:
        # replay the worked solution's arithmetic
        value = None
        for lhs, op, rhs, res in re.findall(r"(\d+) ([+*-]) (\d+) = (\d+)", p.solution):
            assert eval(f"{lhs}{op}{rhs}") == int(res)
            value = int(res)
        assert str(value) == p.answer
        assert len(re.findall(r" = ", p.solution)) == 3


def test_arith_splits_and_settings_differ():
    test = {p.question for p in arith_task(split="test", n=200).problems}
    train = {p.question for p in arith_task(split="train", n=200).problems}
    assert len(test & train) < 10  # independent streams (tiny overlap only by chance of identical text)
    hard = arith_task(n=100, steps=4, max_value=500)
    easy = arith_task(n=100, steps=1, max_value=10)
    assert max(int(p.answer) for p in hard.problems) > max(int(p.answer) for p in easy.problems)
    with pytest.raises(TaskError, match="steps"):
        arith_task(steps=0)


def _require_local_copy(name: str) -> None:
    """These tests check the offline JSONL copies; a clone that cannot see them says so instead of
    failing on the Hub."""
    from rsp.tasks.datasets import BENCHMARKS, data_dir_candidates, find_data_file

    file_name = BENCHMARKS[name].files["test"]
    if find_data_file(file_name) is None:
        searched = ", ".join(str(d) for d in data_dir_candidates())
        pytest.skip(
            f"local benchmark data {file_name} not found (searched {searched}); "
            "set RSP_DATA_DIR to the shared data directory to run this check"
        )


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("gsm8k", 1319),
        ("math500", 500),
        ("aime24", 30),
        ("aime25", 30),
        ("amc23", 40),
        ("minerva", 272),
        ("olympiadbench", 675),
    ],
)
def test_benchmarks_load_from_local_jsonl(name, count):
    _require_local_copy(name)
    task = load_task(name)
    assert len(task.problems) == count
    assert all(p.question and p.answer for p in task.problems)
    assert len({p.id for p in task.problems}) == count


def test_gsm8k_answers_are_plain_numbers_and_fewshot_from_train():
    _require_local_copy("gsm8k")
    task = load_task("gsm8k", limit=5)
    assert task.problems[0].answer == "18"
    assert len(task.fewshot) == 2 and task.fewshot[0].id.startswith("gsm8k-train")


def _write(tmp_path, text: bytes | str):
    path = tmp_path / "d.jsonl"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"problem": "a", "answer": "1"}\n{"problem": "b" "answer": "2"}\n', ":2: malformed JSON"),
        ('{"problem": "a", "answer": "1"}\n{"answer": "2"}\n', ":2: missing field 'problem'"),
        ('{"problem": "  ", "answer": "1"}\n', ":1: field 'problem' is empty"),
        ('{"problem": "a"}\n', ":1: missing field 'answer'"),
        (
            '{"id": "x", "problem": "a", "answer": "1"}\n{"id": "x", "problem": "b", "answer": "2"}\n',
            ":2: duplicate id 'x' (first seen on line 1)",
        ),
        (b'{"problem": "a", "answer": "1"}\n{"problem": "\xff\xfe", "answer": "2"}\n', ":2: not valid UTF-8"),
        ("", "no problems found"),
        ("[1, 2]\n", ":1: expected a JSON object"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises(TaskError) as err:
        read_jsonl_problems(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_unknown_task_and_bad_limit():
    with pytest.raises(TaskError, match="unknown task 'gsm9k'"):
        load_task("gsm9k")
    with pytest.raises(TaskError, match="limit must be >= 1"):
        load_task("arith", limit=0)
    with pytest.raises(TaskError, match="not found"):
        load_task("/nonexistent/file.jsonl")


def test_data_dir_env_override(tmp_path, monkeypatch):
    _write(tmp_path, '{"problem": "a", "answer": "1"}\n').rename(tmp_path / "aime24.jsonl")
    monkeypatch.setenv("RSP_DATA_DIR", str(tmp_path))
    assert find_data_file("aime24.jsonl") == tmp_path / "aime24.jsonl"
    assert len(load_task("aime24").problems) == 1


def test_chat_prompt_marks_end_of_user_turn(tiny_tokenizer):
    task = arith_task(n=1)
    builder = PromptBuilder.for_task(tiny_tokenizer, task)
    assert builder.resolved_style == "chat"
    prompt = builder.build(task.problems[0])
    assert prompt.ids[prompt.user_turn_end] == 3  # the template's <|end|> token follows the user's content
    text = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "x"}])
    assert text.endswith("<|assistant|>")
    assert "\\boxed{}" in builder.render(task.problems[0])[0]


def test_plain_fewshot_prompt_for_base_models(tiny_tokenizer):
    tiny_tokenizer.chat_template = None
    task = arith_task(n=1)
    builder = PromptBuilder.for_task(tiny_tokenizer, task)
    assert builder.resolved_style == "plain" and builder.stop_strings
    head, tail = builder.render(task.problems[0])
    assert head.count("Question:") == 3 and tail == "\nAnswer:"
    assert "\\boxed{" in head  # few-shot answers show the boxed format
    with pytest.raises(TaskError, match="no chat template"):
        PromptBuilder(tiny_tokenizer, style="chat")

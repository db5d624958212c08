"""SFT data for the organism: rsp's own arith prompts, then the task's worked solution and the stop token.

Why a separate builder at all: the organism is only useful if `rsp eval --model <checkpoint>` asks it exactly
what it was trained on. So the prompt side is not re-implemented here; it is `rsp.tasks.PromptBuilder` (the
object `rsp eval` builds its prompts with), and the target is the task's own worked solution (`Start: 5.
5 + 3 = 8. The answer is \\boxed{8}.`), a short chain of thought the grader can check line by line, closed by
the chat template's end-of-turn token so the model learns to stop right after the answer. The loss mask
covers the target and that stop token only; the prompt is context, never a target.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rsp.tasks import Problem, PromptBuilder, Task, load_task
from rsp.tasks.prompts import fewshot_solution

IGNORE = -100  # label of a token that is not a target (the torch cross-entropy convention)


@dataclass(frozen=True)
class Example:
    """One training sequence: `input_ids` = prompt + target + stop; `labels` = IGNORE on the prompt."""

    problem_id: str
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    prompt_len: int


def end_of_turn_id(tokenizer) -> int:
    """The token the chat template writes right after an assistant message's content (`<|im_end|>` for
    SmolLM2): generation stops on it (`rsp.models.loading.END_OF_TURN_TOKENS`), so it is the stop target."""
    marker = "XQXQ"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    after = str(text)[str(text).rindex(marker) + len(marker) :]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(
            "the chat template writes nothing after an assistant message; no stop token to train"
        )
    return int(ids[0])


def target_text(problem: Problem) -> str:
    """The task's worked solution ending in `\\boxed{answer}` (the same text rsp's few-shot prompts show)."""
    return fewshot_solution(problem)


def build_example(builder: PromptBuilder, problem: Problem, stop_id: int) -> Example:
    prompt = builder.build(problem)
    target = builder.tokenizer(target_text(problem), add_special_tokens=False)["input_ids"]
    ids = tuple(prompt.ids) + tuple(target) + (stop_id,)
    labels = (IGNORE,) * len(prompt.ids) + tuple(target) + (stop_id,)
    return Example(problem.id, ids, labels, len(prompt.ids))


def train_examples(
    tokenizer, steps: tuple[int, ...], per_steps: int, max_value: int, seed: int, exclude: set[str]
) -> list[Example]:
    """`per_steps` train-split problems of each step count as examples, in one fixed shuffled order, minus
    any whose question text is in `exclude` (the evaluation problems: the train and test streams are
    already distinct, this also rules out a chance textual repeat)."""
    out: list[Example] = []
    for s in steps:
        task = load_task(
            "arith", split="train", arith_steps=s, arith_max_value=max_value, arith_n=per_steps, seed=seed
        )
        builder = builder_for(tokenizer, task)
        stop = end_of_turn_id(tokenizer)
        out.extend(build_example(builder, p, stop) for p in task.problems if p.question not in exclude)
    random.Random(seed).shuffle(out)
    return out


def eval_questions(steps: tuple[int, ...], n: int, max_value: int, seed: int) -> set[str]:
    """Question texts of the first `n` test problems per step count, as `rsp eval --seed seed` draws them."""
    qs: set[str] = set()
    for s in steps:
        task = load_task("arith", split="test", arith_steps=s, arith_max_value=max_value, limit=n, seed=seed)
        qs.update(p.question for p in task.problems)
    return qs


def builder_for(tokenizer, task: Task) -> PromptBuilder:
    """The builder `rsp eval` uses (`PromptBuilder.for_task`, prompt style auto)."""
    return PromptBuilder.for_task(tokenizer, task, style="auto")

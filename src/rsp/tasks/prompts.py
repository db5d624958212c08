"""Prompt construction: the model's chat template where it has one, a plain few-shot prompt otherwise.

Prompts are tokenised in two pieces split at the end of the user's content, which gives the token
offset of the `end_of_user_turn` insertion point without guessing at template internals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from rsp.core.insert import PromptTokens
from rsp.tasks.base import Problem, Task, TaskError

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
PLAIN_STOP_STRINGS = ("\nQuestion:", "\n\nQuestion")
PromptStyle = Literal["auto", "chat", "plain"]


def fewshot_solution(problem: Problem) -> str:
    """A worked solution ending in a boxed answer, from the problem's reference solution if any."""
    text = problem.solution or ""
    text = re.sub(r"<<[^>]*>>", "", text)  # GSM8K calculator annotations
    text = re.sub(r"####\s*(.+)\s*$", "", text).strip()
    if "\\boxed" not in text:
        text = (text + " " if text else "") + f"The answer is \\boxed{{{problem.answer}}}."
    return text


@dataclass
class PromptBuilder:
    """Turns problems into `PromptTokens` for one tokenizer."""

    tokenizer: object
    style: PromptStyle = "auto"
    fewshot: tuple[Problem, ...] = ()
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.style not in ("auto", "chat", "plain"):
            raise TaskError(f"prompt style must be auto, chat or plain, got {self.style!r}")
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if self.style == "chat" and not has_template:
            raise TaskError("prompt style 'chat' requested but this tokenizer has no chat template "
                            "(a base model?); use --prompt-style plain or auto")
        self.resolved_style = "chat" if (self.style == "chat" or (self.style == "auto" and has_template)) else "plain"

    @classmethod
    def for_task(cls, tokenizer, task: Task, style: PromptStyle = "auto", system_prompt: str | None = None) -> PromptBuilder:
        return cls(tokenizer, style, task.fewshot, system_prompt)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return PLAIN_STOP_STRINGS if self.resolved_style == "plain" else ()

    def render(self, problem: Problem) -> tuple[str, str]:
        """Return (head, tail): the prompt text up to the end of the user's content, and the rest."""
        content = f"{problem.question}\n{INSTRUCTION}"
        if self.resolved_style == "chat":
            messages = []
            if self.system_prompt is not None:
                messages.append({"role": "system", "content": self.system_prompt})
            messages.append({"role": "user", "content": content})
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            cut = text.rfind(content)
            if cut < 0:
                raise TaskError("the chat template changed the user's text; cannot locate the end of the user turn")
            cut += len(content)
            return text[:cut], text[cut:]
        shots = "".join(f"Question: {s.question}\nAnswer: {fewshot_solution(s)}\n\n" for s in self.fewshot)
        head = f"{INSTRUCTION}\n\n{shots}Question: {problem.question}"
        return head, "\nAnswer:"

    def build(self, problem: Problem) -> PromptTokens:
        head, tail = self.render(problem)
        add_special = self.resolved_style == "plain"
        head_ids = self.tokenizer(head, add_special_tokens=add_special)["input_ids"]
        tail_ids = self.tokenizer(tail, add_special_tokens=False)["input_ids"]
        return PromptTokens(ids=tuple(head_ids) + tuple(tail_ids), user_turn_end=len(head_ids))

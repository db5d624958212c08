"""Prompt construction: the model's chat template where it has one, a plain few-shot prompt otherwise.
Prompts are tokenised in two pieces split at the end of the user's content, which gives the
`end_of_user_turn` insertion point without guessing at template internals.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

from rsp.core.insert import PromptTokens
from rsp.tasks.base import Problem, Task, TaskError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from typing_extensions import TypeIs

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
PLAIN_STOP_STRINGS = ("\nQuestion:", "\n\nQuestion")
PromptStyle = Literal["auto", "chat", "plain"]


def fewshot_solution(problem: Problem) -> str:
    """A worked solution ending in a boxed answer, from the problem's reference solution if any."""
    text = re.sub(r"<<[^>]*>>", "", problem.solution or "")  # GSM8K calculator annotations
    text = re.sub(r"####\s*(.+)\s*$", "", text).strip()
    if "\\boxed" not in text:
        text = (text + " " if text else "") + f"The answer is \\boxed{{{problem.answer}}}."
    return text


@dataclass
class PromptBuilder:
    """Turns problems into `PromptTokens` for one tokenizer."""

    tokenizer: PreTrainedTokenizerBase
    style: PromptStyle = "auto"
    fewshot: tuple[Problem, ...] = ()
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.style not in ("auto", "chat", "plain"):
            raise TaskError(f"prompt style must be auto, chat or plain, got {self.style!r}")
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if self.style == "chat" and not has_template:
            raise TaskError(
                "prompt style 'chat' requested but this tokenizer has no chat template "
                "(a base model?); use --prompt-style plain or auto"
            )
        self.resolved_style = "chat" if has_template and self.style != "plain" else "plain"

    @classmethod
    def for_task(
        cls, tokenizer, task: Task, style: PromptStyle = "auto", system_prompt: str | None = None
    ) -> PromptBuilder:
        return cls(tokenizer, style, task.fewshot, system_prompt)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return PLAIN_STOP_STRINGS if self.resolved_style == "plain" else ()

    def render(self, problem: Problem) -> tuple[str, str]:
        """Return (head, tail): the prompt text up to the end of the user's content, and the rest."""
        content = f"{problem.question}\n{INSTRUCTION}"
        if self.resolved_style == "chat":
            system = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
            messages = [*system, {"role": "user", "content": content}]
            text = render_chat(self.tokenizer, messages)
            cut = user_turn_cut(text, messages)
            if cut is None:
                raise TaskError(
                    "the chat template changed the user's text; cannot locate the end of the user turn"
                )
            return text[:cut], text[cut:]
        shots = "".join(f"Question: {s.question}\nAnswer: {fewshot_solution(s)}\n\n" for s in self.fewshot)
        head = f"{INSTRUCTION}\n\n{shots}Question: {problem.question}"
        return head, "\nAnswer:"

    def build(self, problem: Problem) -> PromptTokens:
        head, tail = self.render(problem)
        return tokenize_split(self.tokenizer, head, tail, add_special_tokens=self.resolved_style == "plain")


def tokenize_split(tokenizer, head: str, tail: str, *, add_special_tokens: bool) -> PromptTokens:
    """Tokenise `head` (up to the end of the user's content) and `tail` separately, which gives the
    `end_of_user_turn` offset exactly; every prompt in rsp (tasks, `rsp.attach`, `rsp.generate`, the
    server) is tokenised here."""
    head_ids = tokenizer(head, add_special_tokens=add_special_tokens)["input_ids"]
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    return PromptTokens(ids=tuple(head_ids) + tuple(tail_ids), user_turn_end=len(head_ids))


Messages = list[dict]


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> str:
    """The chat template applied to `messages` with the generation prompt, as text."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # transformers types the result for every combination of options; with tokenize=False it is the text
    return cast(str, text)


def is_messages(prompt: object) -> TypeIs[Messages]:
    """A chat conversation: a list of {"role": ..., "content": ...} dicts."""
    return (
        isinstance(prompt, list) and bool(prompt) and all(isinstance(m, dict) and "role" in m for m in prompt)
    )


def tokenize_prompt(
    tokenizer, prompt: str | Messages | PromptTokens, *, chat: bool | None = None
) -> PromptTokens:
    """A user's prompt as `PromptTokens`: chat messages through the chat template (`end_of_user_turn` at
    the end of the last user message), a string as one user message where the tokenizer has a template
    (`chat` overrides; else raw, with BOS), `PromptTokens` unchanged."""
    if isinstance(prompt, PromptTokens):
        return prompt
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if is_messages(prompt):
        if not has_template:
            raise TaskError("chat messages were given but this tokenizer has no chat template; pass a string")
        messages = prompt
    elif isinstance(prompt, str):
        if chat is True and not has_template:
            raise TaskError("chat=True but this tokenizer has no chat template (a base model?)")
        if not (has_template if chat is None else chat):
            return tokenize_split(tokenizer, prompt, "", add_special_tokens=True)
        messages = [{"role": "user", "content": prompt}]
    else:
        raise TaskError(
            f"a prompt must be a string, a list of chat messages or PromptTokens, got {type(prompt).__name__}"
        )
    text = render_chat(tokenizer, messages)
    cut = user_turn_cut(text, messages)
    return tokenize_split(
        tokenizer, text[:cut], text[cut:] if cut is not None else "", add_special_tokens=False
    )


def user_turn_cut(text: str, messages: Sequence[dict]) -> int | None:
    """Character offset of the end of the last user message's content in a rendered chat, or None."""
    users = [m for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
    if not users or not users[-1]["content"]:
        return None
    cut = text.rfind(users[-1]["content"])
    return None if cut < 0 else cut + len(users[-1]["content"])

"""Problems and tasks: the data side, kept apart from prompting, grading and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str
    solution: str | None = None
    metadata: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Task:
    """A named list of problems plus the facts prompting and grading need."""

    name: str
    problems: tuple[Problem, ...]
    description: str = ""
    fewshot: tuple[Problem, ...] = ()

    def __len__(self) -> int:
        return len(self.problems)


class TaskError(ValueError):
    """A task name, file or record is unusable; the message names what and where."""

"""Tasks: datasets, prompt templates, answer extraction and grading."""

from rsp.tasks.base import Problem, Task, TaskError
from rsp.tasks.grading import Grader, GradeResult, canonical_answer, extract_answer
from rsp.tasks.prompts import PromptBuilder
from rsp.tasks.registry import TASK_NAMES, load_task
from rsp.tasks.synthetic import arith_task

__all__ = [
    "TASK_NAMES",
    "GradeResult",
    "Grader",
    "Problem",
    "PromptBuilder",
    "Task",
    "TaskError",
    "arith_task",
    "canonical_answer",
    "extract_answer",
    "load_task",
]

"""Synthetic arithmetic word problems with tunable difficulty, generated deterministically.

Small models fail GSM8K almost always, so its pass@k curves are flat at zero; here a user picks a
difficulty (operations, size of numbers) where a model is neither at the floor nor at the ceiling.
"""

from __future__ import annotations

import random

from rsp.core.seeds import derive_seed
from rsp.tasks.base import Problem, Task, TaskError

NAMES = (
    "Ava",
    "Ben",
    "Carla",
    "Dev",
    "Emma",
    "Farid",
    "Grace",
    "Hugo",
    "Ines",
    "Jamal",
    "Kira",
    "Liam",
    "Maya",
    "Noah",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
)
ITEMS = (
    "apples",
    "marbles",
    "stickers",
    "books",
    "coins",
    "pencils",
    "shells",
    "cards",
    "stamps",
    "cookies",
    "beads",
    "tickets",
)
SPLITS = ("train", "test")


def _one_problem(rng: random.Random, steps: int, top: int) -> tuple[str, int, str]:
    """Return (question, answer, worked solution) for one problem with numbers up to `top`."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, top)
    sentences = [f"{name} has {value} {item}."]
    lines = [f"Start: {value}."]
    for _ in range(steps):
        ops = ["add", "sub", "mul"] if value * 2 <= top * 4 else ["add", "sub"]
        op = rng.choice(ops)
        if op == "sub" and value < 2:
            op = "add"
        if op == "add":
            k = rng.randint(1, top)
            friend = rng.choice([n for n in NAMES if n != name])
            said = [
                f"{friend} gives {name} {k} more {item}.",
                f"Then {name} finds {k} more {item}.",
                f"{name} buys {k} more {item}.",
            ]
            sentences.append(rng.choice(said))
            lines.append(f"{value} + {k} = {value + k}.")
            value += k
        elif op == "sub":
            k = rng.randint(1, value - 1)
            said = [
                f"{name} gives away {k} {item}.",
                f"Then {name} loses {k} {item}.",
                f"{name} uses {k} of the {item}.",
            ]
            sentences.append(rng.choice(said))
            lines.append(f"{value} - {k} = {value - k}.")
            value -= k
        else:
            k = rng.randint(2, 4)
            word = {2: "doubles", 3: "triples", 4: "quadruples"}[k]
            sentences.append(f"Then {name} {word} the number of {item}.")
            lines.append(f"{value} * {k} = {value * k}.")
            value *= k
    sentences.append(f"How many {item} does {name} have now?")
    solution = " ".join(lines) + f" The answer is \\boxed{{{value}}}."
    return " ".join(sentences), value, solution


def generate_arith(split: str, n: int, steps: int, max_value: int, seed: int) -> tuple[Problem, ...]:
    """Generate n problems of one split; train and test never share a (seed, split, index) stream."""
    if not 1 <= steps <= 8:
        raise TaskError(f"arith steps must be between 1 and 8, got {steps}")
    if not 2 <= max_value <= 10**6:
        raise TaskError(f"arith max_value must be between 2 and 1000000, got {max_value}")
    if split not in SPLITS:
        raise TaskError(f"arith split must be one of {', '.join(SPLITS)}, got {split!r}")
    if n < 1:
        raise TaskError(f"number of problems must be >= 1, got {n}")
    out = []
    meta = {"steps": steps, "max_value": max_value, "split": split}
    for i in range(n):
        rng = random.Random(derive_seed(seed, "arith", split, steps, max_value, i))
        question, answer, solution = _one_problem(rng, steps, max_value)
        pid = f"arith-s{steps}-m{max_value}-{split}-{i:05d}"
        out.append(Problem(pid, question, str(answer), solution, metadata=dict(meta)))
    return tuple(out)


def arith_task(split: str = "test", n: int = 100, steps: int = 2, max_value: int = 20, seed: int = 0) -> Task:
    problems = generate_arith(split, n, steps, max_value, seed)
    # Few-shot examples always come from the train split so they never leak test problems.
    fewshot = generate_arith("train", 2, steps, max_value, seed + 10_007)
    return Task(
        name="arith",
        problems=problems,
        description=f"synthetic arithmetic, {steps} step(s), numbers up to {max_value}, seed {seed}, {split}",
        fewshot=fewshot,
    )

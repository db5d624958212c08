"""Answer extraction and equivalence checking that can never hang or crash a run.

Extraction is linear-time string scanning. Equivalence first tries a cheap exact/numeric check;
only answers that need symbolic comparison go to math-verify, which runs in a separate worker
process with a hard timeout (math-verify's own timeout uses signal.alarm, which fails off the
main thread). A timed-out or crashing check is marked incorrect and the worker is replaced.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from fractions import Fraction

MAX_ANSWER_CHARS = 400  # longer "answers" are not answers; they are marked incorrect without parsing
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) with balanced braces; None if absent/unclosed."""
    for marker in ("\\boxed", "\\fbox"):
        start = text.rfind(marker)
        while start >= 0:
            i = start + len(marker)
            while i < len(text) and text[i] == " ":
                i += 1
            if i < len(text) and text[i] == "{":
                depth = 0
                for j in range(i, len(text)):
                    depth += {"{": 1, "}": -1}.get(text[j], 0)
                    if depth == 0:  # the brace that closes text[i]
                        return text[i + 1 : j].strip()
            elif marker == "\\boxed" and i < len(text) and text[i] != "{":
                m = re.match(r"\s*([^\s$]+)", text[i : i + 200])  # "\boxed 5" form
                if m and i > start + len(marker):
                    return m.group(1)
            start = text.rfind(marker, 0, start)
    return None


def extract_answer(text: str) -> str | None:
    """Final answer of a completion: the last \\boxed{}, else GSM8K '#### N', else 'answer is X', else
    the last number."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed:
        return boxed
    found = re.findall(r"####\s*([^\n]+)", text)  # findall: each match's one group
    if found:
        return found[-1].strip()
    tail = text[-2000:]
    found = re.findall(r"answer is[:\s]*\$?([^\n$]+?)\$?(?:\.\s|\.?$|\n)", tail)
    if found:
        return found[-1].strip()
    numbers = _NUMBER.findall(tail)
    return numbers[-1] if numbers else None


def _strip_wrappers(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"^\\(?:d|t)?frac", r"\\frac", s)
    s = s.replace("\\!", "").replace("\\,", "").replace("\\ ", "").replace("\\%", "").replace("%", "")
    s = s.replace("\\$", "").replace("dfrac", "frac").replace("tfrac", "frac")
    return s.strip().rstrip(".").strip()


def as_number(s: str) -> Fraction | None:
    """Parse a plain number ('1,234', '-3.50', '7/2', '\\frac{7}{2}'); None for anything else."""
    s = _strip_wrappers(s)
    m = re.fullmatch(r"\\frac\{(-?\d+)\}\{(-?\d+)\}", s) or re.fullmatch(r"(-?\d+)\s*/\s*(-?\d+)", s)
    try:
        if m:
            den = int(m.group(2))
            return Fraction(int(m.group(1)), den) if den else None
        if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?|-?\d+(\.\d+)?|-?\.\d+", s):
            return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def canonical_answer(answer: str | None) -> str | None:
    """Canonical string used to group answers for majority voting (numbers normalised)."""
    if answer is None:
        return None
    num = as_number(answer)
    if num is not None:
        return str(num)  # "7/2", or "3" for a whole number
    return re.sub(r"\s+", "", _strip_wrappers(answer))


STARTUP_TIMEOUT = 120.0


def _readline_within(proc: subprocess.Popen, timeout: float) -> str | None:
    """One line from the worker's stdout, or None if none arrives within `timeout` seconds."""
    reply: list[str] = []
    stdout = proc.stdout
    assert stdout is not None, "the worker is started with stdout=PIPE"
    reader = threading.Thread(target=lambda: reply.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return reply[0] if reply else None


@dataclass
class GradeResult:
    """The verdict on one completion: what answer was read from it, whether it is right, and how that was
    decided (exact | numeric | math-verify | timeout | too-long | no-answer | error)."""

    correct: bool
    method: str
    extracted: str | None = None


class Grader:
    """Thread-safe answer checker with a hard per-answer timeout."""

    def __init__(self, timeout: float = 5.0, use_math_verify: bool = True) -> None:
        if timeout <= 0:
            raise ValueError(f"grader timeout must be > 0, got {timeout}")
        self.timeout = timeout
        self.use_math_verify = use_math_verify
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def _start(self) -> None:
        # A fresh interpreter (not fork: the parent holds torch threads; not multiprocessing-spawn:
        # that re-imports the caller's __main__) speaking JSON lines over stdin/stdout.
        worker, pipe = [sys.executable, "-m", "rsp.tasks.verify_worker"], subprocess.PIPE
        self._proc = subprocess.Popen(
            worker, stdin=pipe, stdout=pipe, stderr=subprocess.DEVNULL, text=True, bufsize=1
        )
        # Import and warm-up time is not charged to the first answer's timeout.
        ready = _readline_within(self._proc, STARTUP_TIMEOUT)
        if ready is None or ready.strip() != "ready":
            self._kill()
            raise RuntimeError("the math-verify worker did not start (is math-verify installed?)")

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            # SIGKILL cannot be refused, but a starved machine took more than 5 s to finish a killed
            # worker, and the wait's exception ended a whole `rsp eval`; subprocess reaps it later.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=30)
        self._proc = None

    def close(self) -> None:
        with self._lock:
            self._kill()

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self, pred: str | None, gold: str) -> GradeResult:
        """Is `pred` (an extracted answer) equivalent to `gold`? Never raises or much exceeds the timeout."""
        if pred is None or not pred.strip():
            return GradeResult(False, "no-answer")
        if len(pred) > MAX_ANSWER_CHARS:
            return GradeResult(False, "too-long")
        if _strip_wrappers(pred) == _strip_wrappers(gold):
            return GradeResult(True, "exact")
        gnum, pnum = as_number(gold), as_number(pred)
        if gnum is not None and pnum is not None:
            return GradeResult(gnum == pnum, "numeric")
        if not self.use_math_verify:
            return GradeResult(False, "exact")
        return self._math_verify(gold, pred)

    def _math_verify(self, gold: str, pred: str) -> GradeResult:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            proc = self._proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps([gold, pred]) + "\n")
                proc.stdin.flush()
            except (OSError, ValueError):
                self._kill()
                return GradeResult(False, "error")
            reply = _readline_within(proc, self.timeout)
            if reply is None or not reply.strip():
                self._kill()  # a stuck sympy call (timeout) or a dead worker: replace it
                return GradeResult(False, "timeout" if reply is None else "error")
            return GradeResult(reply.strip() == "1", "math-verify")

    def grade(self, completion: str, gold: str) -> GradeResult:
        """Extract the final answer of `completion` and check it against `gold` (never raises)."""
        try:
            pred = extract_answer(completion)
        except Exception:  # extraction is plain string code; stay safe anyway
            return GradeResult(False, "error")
        result = self.check(pred, gold)
        result.extracted = pred
        return result

"""math-verify worker process: reads JSON [gold, pred] lines, writes '1' or '0' lines, apart from the
evaluation so a sympy blow-up can be killed on timeout from any thread."""

from __future__ import annotations

import json
import sys


def main() -> None:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    configs = [LatexExtractionConfig(), ExprExtractionConfig()]

    def read(answer: str):
        return parse(f"${answer}$", extraction_config=configs, parsing_timeout=None)

    verify(read("1"), read("1"), timeout_seconds=None)  # warm up sympy before announcing readiness
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        try:
            gold, pred = json.loads(line)
            g, p = read(gold), read(pred)
            ok = bool(g and p and verify(g, p, timeout_seconds=None))
        except Exception:  # any failure means "not shown equivalent"
            ok = False
        sys.stdout.write("1\n" if ok else "0\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Bridges from other evaluation tools to rsp's injection, so RSP is one option away in the tools people use.

`rsp.integrations.lm_eval`: EleutherAI's lm-evaluation-harness (`rsp-hf`, `rsp-vllm` models, shipped
offline task configs, `rsp lm-eval`). Nothing here is imported by `import rsp`: each bridge needs its
tool installed (`pip install 'random-soft-prompts[lm-eval]'`).
"""

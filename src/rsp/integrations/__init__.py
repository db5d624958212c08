"""Bridges from other evaluation tools to rsp's injection, so RSP is one option away in the tools people use.

`rsp.integrations.lm_eval`: EleutherAI's lm-evaluation-harness (`rsp-hf`, `rsp-vllm` models, shipped
offline task configs, `rsp lm-eval`). `rsp.integrations.trl`: TRL's GRPO with a fresh RSP per rollout
(`RSPGRPOTrainer`), its recipe script `rsp.integrations.trl_grpo` and its vLLM server
`rsp.integrations.trl_vllm_serve`. Nothing here is imported by `import rsp`: each bridge imports its tool
at the top and needs it installed (`pip install 'random-soft-prompts[lm-eval]'`, `[train]`).
"""

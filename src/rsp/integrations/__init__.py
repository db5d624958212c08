"""Bridges from other tools to rsp's injection: lm-evaluation-harness (`rsp.integrations.lm_eval`,
`rsp lm-eval`) and TRL's GRPO (`rsp.integrations.trl`, its recipe script `trl_grpo` and vLLM server
`trl_vllm_serve`). Nothing here is imported by `import rsp`; each bridge needs its extra installed.
"""

"""`rsp serve`: an OpenAI-compatible HTTP server whose every sample carries its own Random Soft Prompt.

Why a server: best-of-N pipelines, agents, evaluation harnesses (lm-eval's `local-completions`) and RL
rollout workers talk to models through the OpenAI API. No existing server can give each of `n` samples
its own injected vectors (vLLM's `n` shares one prompt; its prompt-embedding requests take a whole
tensor per request); this one fans `n` out into n attempts of `rsp.Generator`, gathers concurrent
requests into shared engine batches, and reports on every choice the RSP seed that rebuilds it.

Modules: `protocol` (request schema, errors), `batcher` (the worker thread and its queue), `logprobs`
(teacher-forced per-token log-probs), `app` (FastAPI routes), `cli` (`rsp serve`). See docs/serving.md.
"""

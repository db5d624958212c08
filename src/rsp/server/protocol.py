"""The OpenAI request schema the server accepts, and its error shape.

Why our own schema: a server reachable by other programs must say exactly which fields it honours. The
fields clients commonly send are accepted (the `openai` client, lm-eval and agent frameworks work
unchanged); those we cannot honour only at their no-op values; anything else (but our `rsp` field) is
refused, so a typo never silently changes the sampling.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from rsp.core.insert import INSERTION_POINTS

Position = Literal["after_generation_prompt", "end_of_user_turn", "prepend"]
assert set(INSERTION_POINTS) == set(get_args(Position))

ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 500: "server_error", 503: "server_error"}


@dataclass(eq=False)
class APIError(Exception):
    """An error answered to the client as OpenAI-style JSON with `status`."""

    status: int
    code: str | None
    message: str
    param: str | None = None

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RSPSettings(Strict):
    """Per-request injection settings; each omitted field keeps the server's flag."""

    length: StrictInt | None = Field(default=None, ge=0)
    scale: float | None = Field(default=None, ge=0)
    position: Position | None = None
    method: StrictStr | None = None


class StreamOptions(Strict):
    include_usage: StrictBool = False


Stop = StrictStr | Annotated[list[StrictStr], Field(max_length=16)] | None
TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)]
Texts = Annotated[list[StrictStr], Field(min_length=1)]


class SamplingFields(Strict):
    """Fields shared by both endpoints."""

    model: StrictStr
    n: StrictInt = Field(default=1, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=-1)  # vLLM's extension; 0 or -1 = off
    min_p: float | None = Field(default=None, ge=0, lt=1)  # vLLM's extension
    stop: Stop = None
    seed: StrictInt | None = Field(default=None, ge=-(2**63), lt=2**63)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: StrictStr | None = None
    rsp: RSPSettings | None = None

    def unsupported(self) -> Iterator[tuple[str, str]]:
        """(field, why) for every accepted field set to a value this server cannot honour."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):  # neither None nor 0
                yield name, f"{name} is not supported (only 0)"
        if self.logit_bias:
            yield "logit_bias", "logit_bias is not supported"


class CompletionRequest(SamplingFields):
    """POST /v1/completions. `prompt`: a string, a list of strings, token ids, or a list of token-id lists;
    it is sent raw (no chat template), as OpenAI's and vLLM's completions endpoints do."""

    prompt: StrictStr | Texts | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    max_tokens: StrictInt | None = Field(default=16, ge=1)
    logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    echo: StrictBool = False
    best_of: StrictInt | None = Field(default=None, ge=1)
    suffix: StrictStr | None = None

    def unsupported(self) -> Iterator[tuple[str, str]]:
        yield from super().unsupported()
        if self.best_of is not None and self.best_of != self.n:
            yield "best_of", "best_of is not supported (every sample is returned; use n)"
        if self.suffix:
            yield "suffix", "suffix (insertion) is not supported"


class TextPart(Strict):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: StrictStr | Annotated[list[TextPart], Field(min_length=1)]
    name: StrictStr | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ResponseFormat(Strict):
    type: Literal["text"]


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions: the messages go through the model's chat template."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: StrictBool | None = None
    store: StrictBool | None = None
    metadata: dict[str, StrictStr] | None = None
    service_tier: StrictStr | None = None

    def unsupported(self) -> Iterator[tuple[str, str]]:
        yield from super().unsupported()
        if self.tools:
            yield "tools", "tools are not supported"
        if self.tool_choice not in (None, "none"):
            yield "tool_choice", "tool_choice is not supported"
        if self.top_logprobs and not self.logprobs:
            yield "top_logprobs", "top_logprobs needs logprobs: true"


def parse_request(model: type[Strict], body: Any) -> Any:
    """Validate a decoded JSON body; schema violations become a 422 APIError naming the field."""
    if not isinstance(body, dict):
        raise APIError(400, "invalid_json", "the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        wrappers = ("str", "int", "float", "bool", "TextPart", "ChatMessage")  # pydantic's, not the client's
        skip = ("function-", "constrained-", "list[")
        loc = [str(p) for p in err["loc"] if not str(p).startswith(skip) and p not in wrappers]
        param = ".".join(loc) or None
        code, message = {
            "extra_forbidden": (
                "unknown_field",
                f"unknown field {param!r}: not part of the OpenAI schema this server accepts "
                "(nor the extra 'rsp' field)",
            ),
            "missing": ("missing_field", f"missing required field {param!r}"),
        }.get(err["type"], ("invalid_value", f"invalid value for {param!r}: {err['msg']}"))
        raise APIError(422, code, message, param) from None

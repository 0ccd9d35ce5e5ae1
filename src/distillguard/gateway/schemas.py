"""Request bodies of the OpenAI API, validated with pydantic.

Unknown fields are accepted and ignored (clients send ``frequency_penalty``, ``metadata``...), as
OpenAI-compatible servers usually do; the fields we read are checked strictly enough that a bad
value gets a 400 naming the parameter. Responses are plain dicts serialised by orjson: building
pydantic models for them would cost more than the rest of the request path.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from distillguard.gateway.errors import APIError, invalid

#: the most choices one request may ask for (each one is a full generation)
MAX_N = 8
#: OpenAI's caps
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # OpenAI content parts; only text parts reach the model
            return "".join(p.get("text", "") for p in self.content if isinstance(p, dict) and p.get("type", "text") == "text")
        return self.content or ""


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def prompt(self) -> list[dict[str, Any]]:
        # "developer" is OpenAI's new name for "system"; chat templates only know the old one
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]

    def wants_logprobs(self) -> tuple[bool, int]:
        if self.top_logprobs and not self.logprobs:
            raise invalid("top_logprobs requires logprobs to be true", param="top_logprobs")
        return self.logprobs, self.top_logprobs or 0


class CompletionRequest(_Common):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("send exactly one prompt per request (batches of prompts are not supported)")
        return v

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def wants_logprobs(self) -> tuple[bool, int]:
        if self.echo:
            raise invalid("echo is not supported", param="echo")
        return self.logprobs is not None, self.logprobs or 0


def parse(model: type[BaseModel], body: dict[str, Any]) -> Any:
    """Validate ``body``; the first problem becomes a 400 naming the parameter."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS)]
        param = ".".join(loc) or None
        msg = err["msg"]
        if err["type"] == "missing":
            msg = f"missing required parameter {param!r}"
        elif param:
            msg = f"invalid value for {param!r}: {msg}"
        raise APIError(400, msg, param=param, code="invalid_value" if err["type"] != "missing" else "missing_required_parameter") from None


# pydantic names the union branch in ``loc`` (e.g. ``stop.str``); a client wants the field name
_UNION_TAGS = {"str", "list[str]", "int", "float", "bool", "list[dict[str,any]]", "function-after[_stop_list(), union[str,list[str]]]"}

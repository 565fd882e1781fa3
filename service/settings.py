"""The one typed settings object. Every setting is read from an `UNCLIP_*` environment variable
(or a CLI flag that overrides it); nothing else in the project reads the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.webhooks.signature import parse_secret


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNCLIP_", extra="ignore")

    # Where things are.
    redis_url: str | None = Field(
        None, description="Redis to queue jobs in; unset = `unclip serve` starts an embedded one."
    )
    checkpoint: Path | None = Field(None, description="Checkpoint folder; unset = the shipped default.")
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(
        None, description="Base URL clients see (for image URLs); unset = taken from each request."
    )

    # Who may call.
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated bearer keys; empty = open (local use)."
    )

    # What a request may carry.
    max_body_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_prompt_chars: int = 1000
    max_images_per_job: int = 10
    max_frames: int = 16

    # The queue.
    stream: str = "jobs"
    backlog_limit: int = Field(256, description="Queued jobs past which new work gets 429.")
    result_ttl_seconds: int = 24 * 3600
    lease_seconds: float = Field(
        30.0, description="A running job is taken over this long after its worker's last renewal."
    )
    max_attempts: int = 3
    sync_timeout_seconds: float = Field(600.0, description="How long the OpenAI-style endpoints wait.")

    # The worker.
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: str = Field("auto", description="auto | float32 | float16 | bfloat16")
    attention_backend: str = Field("auto", description="auto | triton | sdpa")
    max_batch_size: int = Field(8, description="Images a worker runs in one batch.")
    worker_name: str | None = Field(None, description="Consumer name; unset = hostname-pid.")
    worker_metrics_port: int | None = Field(
        9100, description="Prometheus port of `unclip worker`; unset = off."
    )

    # Webhooks (service.webhooks).
    webhook_secret: str | None = Field(
        None, description="whsec_<base64> key that signs deliveries; unset = jobs with a webhook get 422."
    )
    webhook_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated hosts a webhook may reach though private or loopback (local dev).",
    )
    webhook_timeout_seconds: float = Field(15.0, description="One delivery attempt is cut after this long.")
    webhook_max_attempts: int = Field(10, description="Attempts before a delivery is given up (dead).")
    webhook_backoff_seconds: float = Field(5.0, description="Wait after the first failed attempt; doubles.")
    webhook_backoff_max_seconds: float = Field(3600.0, description="Longest wait between two attempts.")

    log_level: str = "info"

    @field_validator("api_keys", "webhook_allow_hosts", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        # `UNCLIP_API_KEYS="k1,k2"` arrives as one string (NoDecode keeps it from being read as JSON).
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: str | None) -> str | None:
        if value:
            parse_secret(value)  # a malformed secret stops the start with the reason
        return value or None


@lru_cache
def get_settings() -> Settings:
    return Settings()

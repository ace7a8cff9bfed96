"""One place for every setting, read from the environment (EVALHUB_*) or a .env file."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVALHUB_", env_file=".env", extra="ignore")

    home: Path = Field(
        default=Path.home() / ".evalhub",
        description="Where the embedded database, artifacts and caches live.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; SQLite at HOME/evalhub.db when unset.",
    )
    artifact_url: str | None = Field(
        default=None,
        description="Artifact store root: a local directory or any fsspec URL (s3://...).",
    )
    allow_server_paths: bool = Field(
        default=False,
        description="Let API callers register directories that already sit on the server.",
    )
    max_upload_bytes: int = Field(
        default=8 * 1024**3, description="Largest upload, and largest unpacked archive, in bytes."
    )
    max_archive_members: int = Field(default=20_000, description="Most files in one archive.")
    admin_token: SecretStr | None = Field(
        default=None, description="Admin token to install on a fresh home instead of a random one."
    )
    run_worker: bool = Field(
        default=True, description="Run a job worker inside `evalhub serve` (the embedded default)."
    )
    serving_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint that serves registry models by their ref; "
        "`evalhub serve` uses its own gateway when this is unset",
    )
    serving_api_key: SecretStr | None = Field(
        default=None, description="The key for EVALHUB_SERVING_URL, when it needs one."
    )
    judge_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint of the LLM judge, when a suite names none.",
    )
    judge_model: str | None = Field(
        default=None, description="The judge's model name, when a suite names none."
    )
    judge_api_key: SecretStr | None = Field(
        default=None,
        description="API key sent only to judge_base_url; never taken from requests.",
    )
    metric_modules: list[str] = Field(
        default_factory=list,
        description="Python modules (or packages) whose `module:function` metrics a suite sent "
        "over the API may name, as a JSON list; empty: only built-in metrics and those "
        "installed under the `evalhub.metrics` entry point group.",
    )
    prices: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Per-model prices per million tokens for the `cost` metric, as JSON: "
        '{"model": {"prompt": 0.15, "completion": 0.6}}.',
    )
    feedback_scales: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"thumbs": (0.0, 1.0), "rating": (1.0, 5.0)},
        description="Feedback names and the range of their scores, as JSON: "
        '{"thumbs": [0, 1], "rating": [1, 5]}; feedback of another name is refused.',
    )
    monitor_interval: float = Field(
        default=10.0,
        description="Seconds between the monitor passes (online scoring, the rollout "
        "controller) that `evalhub serve` runs; 0 turns them off (run `evalhub monitor run`).",
    )
    vllm_python: str = Field(
        default=".vllm-venv/bin/python",
        description="The Python that runs vLLM (its own virtualenv; the GPU or the CPU build).",
    )
    vllm_command: list[str] = Field(
        default_factory=lambda: ["-m", "vllm.entrypoints.openai.api_server"],
        description="What the vLLM Python runs (JSON list); the module entry point works in "
        "every build (`vllm serve` is broken in the CPU build).",
    )
    vllm_max_loras: int = Field(default=4, description="Adapters vLLM keeps on the device.")
    vllm_max_lora_rank: int = Field(default=16, description="Largest adapter rank vLLM accepts.")
    vllm_max_cpu_loras: int = Field(default=8, description="Adapters vLLM caches in CPU memory.")
    vllm_args: list[str] = Field(
        default_factory=lambda: ["--dtype", "float32", "--max-model-len", "512"],
        description="More vLLM arguments (JSON list in the environment).",
    )
    gateway_timeout: float = Field(default=120.0, description="Seconds a backend may take.")
    adapter_idle_seconds: float = Field(
        default=60.0,
        description="Seconds an adapter no arm with weight points at stays loaded after its "
        "last request.",
    )
    url: str | None = Field(
        default=None, description="The CLI talks to this server; in-process when unset."
    )
    token: SecretStr | None = Field(default=None, description="The CLI's API token.")

    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'evalhub.db'}"

    @cached_property
    def resolved_artifact_url(self) -> str:
        return self.artifact_url or str(self.home / "artifacts")

    def ensure_home(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home

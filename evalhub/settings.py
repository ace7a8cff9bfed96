"""One place for every setting, read from the environment (EVALHUB_*) or a .env file."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVALHUB_", env_file=".env", extra="ignore")

    home: Path = Field(
        default=Path.home() / ".evalhub",
        description="Where the embedded database, artifacts and caches live.",
        json_schema_extra={"shown_default": "`~/.evalhub`"},
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL, e.g. `postgresql+psycopg://user@host/db`.",
        json_schema_extra={"shown_default": "SQLite at `$EVALHUB_HOME/evalhub.db` (WAL)"},
    )
    artifact_url: str | None = Field(
        default=None,
        description="Artifact store root: a local directory or any fsspec URL; `s3://bucket/prefix` "
        "needs `pip install 'evalhub[s3]'` (see Artifacts on S3).",
        json_schema_extra={"shown_default": "`$EVALHUB_HOME/artifacts`"},
    )
    artifact_options: SecretStr | None = Field(
        default=None,
        description="fsspec storage options for EVALHUB_ARTIFACT_URL as a JSON object, e.g. "
        '{"endpoint_url": "http://127.0.0.1:9000"} for s3fs; secret, since it may hold keys. '
        "s3:// also reads the usual AWS_* variables and ~/.aws, like boto3.",
    )
    allow_server_paths: bool = Field(
        default=False,
        description="Let API callers register directories that already sit on the server.",
    )
    max_upload_bytes: int = Field(
        default=8 * 1024**3,
        description="Largest upload, and largest unpacked archive, in bytes.",
        json_schema_extra={"shown_default": "8 GiB"},
    )
    max_archive_members: int = Field(default=20_000, description="Most files in one archive.")
    admin_token: SecretStr | None = Field(
        default=None,
        description="Admin token to install on a fresh home instead of a random one.",
        json_schema_extra={"shown_default": "random, printed once"},
    )
    run_worker: bool = Field(
        default=True, description="Run a job worker inside `evalhub serve` (the embedded default)."
    )
    worker_heartbeat_seconds: float = Field(
        default=5.0, gt=0, description="Seconds between a job worker's heartbeats."
    )
    worker_stale_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A running job whose worker has not heartbeated for this long goes back to "
        "the queue, and the next worker resumes it from its newest checkpoint; keep it several "
        "heartbeats long, and the workers' clocks in sync (they compare their own times).",
    )
    store_checkpoints: bool | None = Field(
        default=None,
        description="Copy each complete fine-tuning checkpoint to the artifact store, so that a "
        "worker on another machine can resume a job whose worker died; unset: on when "
        "EVALHUB_ARTIFACT_URL is set (a store beyond this home), off on the embedded default.",
    )
    serving_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint that serves registry models by their ref; "
        "for eval jobs.",
        json_schema_extra={"shown_default": "the server's own gateway"},
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
    train_price_per_hour: float = Field(
        default=0.0,
        ge=0,
        description="What an hour of a training worker costs, for the cost column of experiment "
        "leaderboards; 0 leaves the column empty.",
    )
    feedback_scales: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"thumbs": (0.0, 1.0), "rating": (1.0, 5.0)},
        json_schema_extra={"shown_default": '`{"thumbs": [0, 1], "rating": [1, 5]}`'},
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
    vllm_gpus: list[int] | None = Field(
        default=None,
        description="GPU ids managed vLLM replicas share out (JSON list): each replica takes the "
        "next tensor x pipeline parallel size of them as CUDA_VISIBLE_DEVICES; unset leaves the "
        "variable as the server has it.",
    )
    gateway_timeout: float = Field(default=120.0, description="Seconds a backend may take.")
    auto_backend: Literal["auto"] | bool = Field(
        default="auto",
        description="Start a managed local backend on demand when the gateway is asked for a "
        "version whose base no backend serves: `auto` does on the embedded SQLite database and "
        "not on PostgreSQL (where operators place backends); `true` or `false` force it.",
    )
    auto_backend_retry_seconds: float = Field(
        default=30.0,
        ge=0,
        description="After an on-demand start fails, how long requests for that base get the "
        "same 503 before the gateway tries again.",
    )
    adapter_idle_seconds: float = Field(
        default=60.0,
        description="Seconds an adapter no arm with weight points at stays loaded after its "
        "last request.",
    )
    ray_address: str | None = Field(
        default=None,
        description="The Ray cluster (its head's host:port, as `ray start --head` prints it) "
        "that runs jobs submitted with executor 'ray'; the worker that claims such a job "
        "needs it, and the `ray` extra.",
    )
    url: str | None = Field(
        default=None, description="The CLI talks to this server; in-process when unset."
    )
    token: SecretStr | None = Field(default=None, description="The CLI's API token.")

    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'evalhub.db'}"

    @property
    def auto_backend_enabled(self) -> bool:
        """EVALHUB_AUTO_BACKEND with `auto` resolved against the database."""
        if self.auto_backend == "auto":
            return self.resolved_database_url.startswith("sqlite")
        return bool(self.auto_backend)

    @cached_property
    def resolved_artifact_url(self) -> str:
        return self.artifact_url or str(self.home / "artifacts")

    @property
    def resolved_store_checkpoints(self) -> bool:
        if self.store_checkpoints is None:
            return self.artifact_url is not None
        return self.store_checkpoints

    @cached_property
    def resolved_artifact_options(self) -> dict[str, Any]:
        """EVALHUB_ARTIFACT_OPTIONS parsed; errors never echo its value (it may hold keys)."""
        if self.artifact_options is None:
            return {}
        try:
            options = json.loads(self.artifact_options.get_secret_value() or "{}")
        except ValueError:
            options = None
        if not isinstance(options, dict):
            raise ValueError(
                "EVALHUB_ARTIFACT_OPTIONS must be a JSON object of fsspec storage options, "
                'such as {"endpoint_url": "http://127.0.0.1:9000"}'
            )
        return options

    @staticmethod
    def reference() -> str:
        """Every setting as a Markdown table, for the README's Configuration section: generated
        from the fields, so the documentation cannot drift from the code."""
        rows = ["| variable | default | meaning |", "|---|---|---|"]
        for name, field in Settings.model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            shown = extra.get("shown_default") or _shown(
                field.get_default(call_default_factory=True)
            )
            meaning = (field.description or "").replace("|", "\\|")
            rows.append(f"| `EVALHUB_{name.upper()}` | {shown} | {meaning} |")
        return "\n".join(rows) + "\n"

    def ensure_home(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict):
        return f"`{json.dumps(value)}`"
    return f"`{value}`" if isinstance(value, str) else str(value)


def settings_problems(error: ValidationError) -> str:
    """A settings error in the names the user set: `EVALHUB_X: what is wrong (got 'value')`."""
    lines = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else ""
        secret = "SecretStr" in str(getattr(Settings.model_fields.get(field), "annotation", ""))
        got = "" if secret else f" (got {problem.get('input')!r})"
        lines.append(f"EVALHUB_{field.upper()}: {problem['msg']}{got}")
    return "the settings cannot be read:\n  " + "\n  ".join(lines)

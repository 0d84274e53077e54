"""Service settings: environment variables with the ``PIPEWAVE_`` prefix, overridden by flags."""

from __future__ import annotations

import functools
import logging
import os
import secrets
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIPEWAVE_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".pipewave")
    api_token: str | None = Field(None, min_length=16, max_length=256)  # else home/api-token
    database_url: str | None = None  # default: sqlite:///<home>/jobs.db (PostgreSQL URLs work)
    data_root: Path | None = None  # text datasets must lie inside (default: <home>/data)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    ray_address: str | None = None  # none: an embedded local Ray cluster
    local_cpus: int = Field(4, ge=1, le=1024)  # the embedded cluster's logical CPUs (stage slots),
    # at least this machine's cores
    cpus_per_stage: float = Field(1.0, gt=0, le=1024)  # a stage's CPUs (and threads on a cluster)
    gpus_per_stage: float = Field(0.0, ge=0, le=16)  # >0: a stage's GPUs (a GPU worker group)
    max_body_bytes: int = Field(1_048_576, ge=1024, le=1 << 30)
    dispatch: bool = True  # start queued jobs (off: accept and queue only, e.g. for maintenance)
    run_steps: int = Field(8, ge=1, le=1_000_000)  # flush schedules: steps per run (live figures)
    poll_s: float = Field(0.5, gt=0, le=60)  # how often the queue and SSE streams look for news

    @property
    def db_url(self) -> str:
        """The job store's SQLAlchemy URL; a plain ``postgresql://`` URL uses psycopg 3."""
        url = self.database_url or f"sqlite:///{self.home / 'jobs.db'}"
        return "postgresql+psycopg://" + url.removeprefix("postgresql://") if url.startswith(
            "postgresql://") else url

    @property
    def data_dir(self) -> Path:
        return (self.data_root or self.home / "data").expanduser()

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def token_file(self) -> Path:
        return self.home / "api-token"


def load_token(settings: Settings) -> str:
    """The API token: ``PIPEWAVE_API_TOKEN``, else the token file, created (mode 0600) if absent."""
    if settings.api_token:
        return settings.api_token
    path = settings.token_file
    if path.exists():
        token = path.read_text().strip()
        if len(token) >= 16:
            return token
        logger.warning("%s holds no usable token; writing a new one", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return token


@functools.lru_cache
def get_settings() -> Settings:
    return Settings()

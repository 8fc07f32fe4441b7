"""Settings from SEQCAST_* environment variables, with defaults that make the demo run.

Nothing happens at import time: folders and URLs are derived when asked for.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where seqcast keeps its data and what it names things.

    - `SEQCAST_HOME`: folder of the embedded stores (SQLite database, MLflow store, validation results).
    - `SEQCAST_DATABASE_URL`: SQLAlchemy URL of the observations/forecasts database (default: SQLite in HOME).
    - `SEQCAST_MLFLOW_TRACKING_URI` or MLflow's own `MLFLOW_TRACKING_URI` (default: SQLite in HOME).
    - `SEQCAST_REGISTERED_MODEL`, `SEQCAST_EXPERIMENT`: names in the MLflow registry and tracking store.

    Bounded waits (seconds), so that a store that is down, hung or locked fails a command with one message instead
    of hanging it:

    - `SEQCAST_DB_CONNECT_TIMEOUT` (10): opening a database connection. A server that accepts TCP but never
      answers hangs here, so this bounds a hung database (it is not retried: see `tasks.store.is_connection_error`).
    - `SEQCAST_DB_STATEMENT_TIMEOUT` (300): one SQL statement on PostgreSQL. The largest statements are a read of
      every observation of the run and 5,000-row upsert batches, seconds each on a nightly job; five minutes
      leaves headroom on a busy server and still ends a runaway query.
    - `SEQCAST_DB_LOCK_TIMEOUT` (15): waiting for a row or table lock another session holds (PostgreSQL
      `lock_timeout`, SQLite `busy_timeout`). A concurrent run writing the same keys commits within seconds; a
      session left holding locks fails the write with a message instead of stalling the schedule.
    - `SEQCAST_MLFLOW_TIMEOUT` (8) and `SEQCAST_MLFLOW_RETRIES` (2): one HTTP request to an MLflow tracking
      server, and MLflow's own retries of it; set as MLflow's `MLFLOW_HTTP_REQUEST_TIMEOUT` and
      `MLFLOW_HTTP_REQUEST_MAX_RETRIES` unless those are set explicitly. A hung server fails a call after about
      timeout x (retries + 1) plus MLflow's backoff between tries (0 s, then 4 s, plus up to 1 s of jitter each):
      ~29 s with the defaults, which leaves a `seqcast forecast` (whose Prefect start-up takes 10-20 s on 2 busy
      cores) inside a minute. MLflow's REST calls are small; two retries ride out a server restart.
    """

    model_config = SettingsConfigDict(env_prefix="SEQCAST_", extra="ignore")

    home: Path = Path(".seqcast")
    database_url: SecretStr | None = None
    mlflow_tracking_uri: str | None = None
    registered_model: str = "seqcast"
    experiment: str = "seqcast"
    db_connect_timeout: float = Field(default=10.0, gt=0)
    db_statement_timeout: float = Field(default=300.0, gt=0)
    db_lock_timeout: float = Field(default=15.0, gt=0)
    mlflow_timeout: float = Field(default=8.0, gt=0)
    mlflow_retries: int = Field(default=2, ge=0)

    @property
    def home_dir(self) -> Path:
        """The HOME folder as an absolute path, created on first use."""
        path = self.home.expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def db_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.home_dir / 'seqcast.db'}"

    @property
    def tracking_uri(self) -> str:
        uri = self.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        return uri or f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        """Artifact folder for experiments created against the embedded MLflow store."""
        return self.home_dir / "mlartifacts"

    @property
    def validation_dir(self) -> Path:
        """Where Great Expectations results are kept as JSON and HTML."""
        path = self.home_dir / "validation"
        path.mkdir(parents=True, exist_ok=True)
        return path


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call `get_settings.cache_clear()` after changing the environment."""
    return Settings()


def redact_url(url: str) -> str:
    """A database URL with its password hidden, safe for logs and MLflow params."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def redact_uri(uri: str) -> str:
    """Any store URI (a database URL, an MLflow tracking URI such as http://user:pw@host:5000) without its
    password; a URI that does not parse is shown as its scheme only."""
    try:
        parts = urlsplit(uri)
        if parts.password is None:
            return uri
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return f"{uri.split(':', 1)[0]}:..."


def seconds(value: float) -> str:
    """A timeout as messages show it: `2 s`, `0.5 s`."""
    return f"{value:g} s"


class MlflowHttpLimits(NamedTuple):
    """MLflow's HTTP timeout and retries in force, and the variable that set them (for messages)."""

    timeout: float
    retries: int
    setting: str


# MLflow's own variables for its HTTP client, read on every request: the value seqcast set last for each, so a
# value the user set (any other value) is left alone while ours follow the settings.
_mlflow_env_set: dict[str, str] = {}


def apply_mlflow_timeouts(settings: Settings | None = None) -> MlflowHttpLimits:
    """Set MLflow's HTTP timeout and retries from SEQCAST_MLFLOW_TIMEOUT / SEQCAST_MLFLOW_RETRIES, unless the user
    set MLFLOW_HTTP_REQUEST_TIMEOUT / MLFLOW_HTTP_REQUEST_MAX_RETRIES; returns the limits in force.

    Called before MLflow calls (tasks/registry.py, tasks/forecast.py); changes only this process's environment.
    """
    settings = settings or get_settings()
    wanted = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(settings.mlflow_timeout))),  # MLflow reads an int
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(settings.mlflow_retries),
    }
    users: set[str] = set()
    for name, value in wanted.items():
        current = os.environ.get(name)
        if current is None or current == _mlflow_env_set.get(name):
            os.environ[name] = value
            _mlflow_env_set[name] = value
        else:
            users.add(name)
    setting = "MLFLOW_HTTP_REQUEST_TIMEOUT" if "MLFLOW_HTTP_REQUEST_TIMEOUT" in users else "SEQCAST_MLFLOW_TIMEOUT"
    try:
        timeout = float(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"])
        retries = int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    except ValueError:  # the user's value is not a number: MLflow will say so on its first request
        return MlflowHttpLimits(settings.mlflow_timeout, settings.mlflow_retries, setting)
    return MlflowHttpLimits(timeout, retries, setting)

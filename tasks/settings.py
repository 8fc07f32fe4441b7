"""Settings from SEQCAST_* environment variables, with defaults that make the demo run.

Nothing happens at import time: folders and URLs are derived when asked for.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where seqcast keeps its data and what it names things.

    - `SEQCAST_HOME`: folder of the embedded stores (SQLite database, MLflow store, validation results).
    - `SEQCAST_DATABASE_URL`: SQLAlchemy URL of the observations/forecasts database (default: SQLite in HOME).
    - `SEQCAST_MLFLOW_TRACKING_URI` or MLflow's own `MLFLOW_TRACKING_URI` (default: SQLite in HOME).
    - `SEQCAST_REGISTERED_MODEL`, `SEQCAST_EXPERIMENT`: names in the MLflow registry and tracking store.
    """

    model_config = SettingsConfigDict(env_prefix="SEQCAST_", extra="ignore")

    home: Path = Path(".seqcast")
    database_url: SecretStr | None = None
    mlflow_tracking_uri: str | None = None
    registered_model: str = "seqcast"
    experiment: str = "seqcast"

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

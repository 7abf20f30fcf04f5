"""Schema migrations (Alembic), run by `conveyor migrate` and by `conveyor dev` at start."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from conveyor.db.database import sync_url

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    # Alembic (and Mako, Pygments) are imported here, not at start-up: services never
    # migrate, and importing them cost every service process ~70 ms before it could serve.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (idempotent). SQLite folders are created."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    from alembic import command

    command.upgrade(alembic_config(url), revision)

"""PostgreSQL (or SQLite in dev): the source of truth for jobs and API keys."""

from conveyor.db.database import Database, sync_url
from conveyor.db.jobs import JobStore
from conveyor.db.keys import KeyStore
from conveyor.db.migrate import migrate

__all__ = ["Database", "JobStore", "KeyStore", "migrate", "sync_url"]

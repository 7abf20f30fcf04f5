"""PostgreSQL (or SQLite in dev): the source of truth for jobs and API keys."""

from conveyor.store.database import Database, sync_url
from conveyor.store.jobs import JobStore
from conveyor.store.keys import KeyStore
from conveyor.store.migrate import migrate

__all__ = ["Database", "JobStore", "KeyStore", "migrate", "sync_url"]

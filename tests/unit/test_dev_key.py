"""`conveyor dev`'s admin key: kept between runs, so keys do not pile up in the database
and an exported CONVEYOR_API_KEY keeps working after a restart (issue 23, item 4)."""

from __future__ import annotations

import stat
from pathlib import Path

from conveyor.cli.dev import DEV_KEY_FILE, dev_key
from conveyor.config import Settings


def test_dev_reuses_its_stored_key_unless_told_otherwise(tmp_path: Path) -> None:
    settings = Settings(dev_api_key="")
    first = dev_key(settings, tmp_path)
    assert dev_key(settings, tmp_path) == first, "the second run reuses the first's key"
    stored = tmp_path / DEV_KEY_FILE
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    renewed = dev_key(settings, tmp_path, new=True)
    assert renewed != first and dev_key(settings, tmp_path) == renewed
    assert dev_key(Settings(dev_api_key="cv_set"), tmp_path) == "cv_set"

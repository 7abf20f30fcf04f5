"""`conveyor dev`'s admin key: kept between runs, so keys do not pile up in the database
and an exported CONVEYOR_API_KEY keeps working after a restart (issue 23, item 4)."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

from conveyor.cli.dev import DEV_KEY_FILE, dashboard_addr, dev_key
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


def test_dev_dashboard_moves_off_a_taken_port() -> None:
    """`conveyor dev` serves the dashboard on 127.0.0.1:8080 unless that port is taken: then
    on a free one (a second dev, or anything else on 8080, must not stop it starting); a
    CONVEYOR_DASHBOARD_ADDR the user set is kept as it is."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        settings = Settings(dashboard_addr=addr)
        moved = dashboard_addr(settings, {})
        assert moved != addr and moved.startswith("127.0.0.1:")
        assert dashboard_addr(settings, {"CONVEYOR_DASHBOARD_ADDR": addr}) == addr
    assert dashboard_addr(settings, {}) == addr  # free again

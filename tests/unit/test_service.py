"""What every service process sets up before it serves (conveyor.server.service)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_a_service_freezes_its_start_up_heap_and_collects_young_objects_less_often() -> None:
    """Guards the api's event latency tail: without this, full collections of a heap with
    2,000 open streams stopped its loop for 100-240 ms (see `tune_collector`). Run in a child
    process, so that this test process keeps the collector it had."""
    probe = (
        "import gc, json\n"
        "from conveyor.server.service import YOUNG_COLLECTION_ALLOCATIONS, tune_collector\n"
        "before = gc.get_freeze_count()\n"
        "tune_collector()\n"
        "print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold()[0],"
        " YOUNG_COLLECTION_ALLOCATIONS]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60).stdout  # fmt: skip
    before, frozen, young, wanted = json.loads(out)
    assert before == 0 and frozen > 10_000, "the imported modules' objects are frozen"
    assert young == wanted == 20_000

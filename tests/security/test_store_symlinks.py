"""The folder object store never follows a symlink below its folder (issue 18, item 6): a
link planted in the folder, to another object or to a file outside, or a linked folder, is
not found when read, stat'ed, linked or downloaded, and a write through one neither lands
in the link's target nor changes it. Against a real folder and the real download server."""

from __future__ import annotations

import io
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from conveyor.objects import ObjectNotFound
from conveyor.objects.local import LocalStore
from tests.objectstores import serving_downloads

VICTIM = "jobs/victim/artifacts/secret.txt"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    """A folder store with another owner's object in it and its download server running."""
    store = LocalStore(tmp_path / "objects", base_url="http://placeholder")
    with serving_downloads(store):
        store.put(VICTIM, io.BytesIO(b"victim's bytes"))
        (tmp_path / "outside.txt").write_bytes(b"outside bytes")
        yield store


def _plant(store: LocalStore, key: str, target: Path) -> None:
    link = store.root / key
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def _download_status(store: LocalStore, key: str) -> int:
    """The download server's answer to a genuinely signed link for `key`."""
    url = store.link(key, int(time.time()) + 300, "", "")
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _assert_refused(store: LocalStore, key: str) -> None:
    with pytest.raises(ObjectNotFound), store.open(key):
        pass
    with pytest.raises(ObjectNotFound):
        store.read(key)
    with pytest.raises(ObjectNotFound):
        store.path(key)
    with pytest.raises(ObjectNotFound):
        store.url(key, expires=timedelta(minutes=5))
    assert store.stat(key) is None
    assert _download_status(store, key) == 404


@pytest.mark.parametrize("inside", [True, False], ids=["to-another-object", "to-outside"])
def test_a_symlinked_object_is_not_found(store: LocalStore, inside: bool) -> None:
    target = store.root / VICTIM if inside else store.root.parent / "outside.txt"
    _plant(store, "jobs/evil/artifacts/x.txt", target)
    _assert_refused(store, "jobs/evil/artifacts/x.txt")
    relative = os.path.relpath(target, store.root / "jobs/evil/artifacts")
    _plant(store, "jobs/evil/artifacts/relative.txt", Path(relative))
    _assert_refused(store, "jobs/evil/artifacts/relative.txt")


def test_a_symlinked_folder_is_not_found_for_reads_or_writes(store: LocalStore) -> None:
    _plant(store, "jobs/evil", store.root / "jobs/victim")
    _assert_refused(store, "jobs/evil/artifacts/secret.txt")
    with pytest.raises(OSError, match="symlink"):
        store.put("jobs/evil/artifacts/new.txt", io.BytesIO(b"planted"))
    assert not (store.root / "jobs/victim/artifacts/new.txt").exists()
    store.delete(["jobs/evil/artifacts/secret.txt"])
    assert store.read(VICTIM) == b"victim's bytes", "a delete does not go through the link"


def test_a_write_over_a_symlink_replaces_the_link_not_its_target(store: LocalStore) -> None:
    _plant(store, "jobs/evil/artifacts/x.txt", store.root / VICTIM)
    store.put("jobs/evil/artifacts/x.txt", io.BytesIO(b"new bytes"))
    assert store.read(VICTIM) == b"victim's bytes"
    assert not (store.root / "jobs/evil/artifacts/x.txt").is_symlink()
    assert store.read("jobs/evil/artifacts/x.txt") == b"new bytes"


@pytest.mark.timeout(10)  # opening the FIFO would block for ever
def test_a_planted_fifo_is_not_found_instead_of_blocking_the_reader(store: LocalStore) -> None:
    os.mkfifo(store.root / "jobs/victim/artifacts/pipe")
    with pytest.raises(ObjectNotFound), store.open("jobs/victim/artifacts/pipe"):
        pass

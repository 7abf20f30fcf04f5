"""The Python snippets of the README, docs/handlers.md and docs/workflows.md run as pasted.

Each ```python block is either a file of the reader's app, named by its first line
(`# mypkg/jobs.py`, `# tests/test_reports.py`), or a script. The test writes the files
into an empty folder outside the repository, as a reader would, and then:

- runs the docs' handler tests with `python -m pytest` from that folder;
- runs each handler of the README's modules once with `conveyor.testing.run_handler`;
- starts `conveyor dev --handlers mypkg.reports,mypkg.workflows` there (its mail going to a
  test SMTP server) and runs every script against it, with nothing but CONVEYOR_API_ADDR and
  CONVEYOR_API_KEY set, as the README says.

A snippet that stops running (a renamed method, a placeholder left in, a result that reads
differently from what its comment shows) fails here."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

from conveyor.cli.dev import wait_serving
from tests.e2e.test_dev import DEV_KEY, dev_env
from tests.mailbox import Mailbox
from tests.processes import CONVEYOR

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", ROOT / "docs" / "handlers.md", ROOT / "docs" / "workflows.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
FILE_HEADER = re.compile(r"# ([\w/]+\.py)\n")

# The README's handler modules, each type run once in-process with the payload shown.
HANDLER_RUNS = """
from conveyor.testing import run_handler
import mypkg.jobs, mypkg.pdfs

report = run_handler("report.build", {"account": "acme", "month": "2026-11"})
assert report.result == {"pages": 3}, report.result
assert [round(p) for p, _ in report.progress] == [33, 67, 100], report.progress
assert report.artifacts["report.txt"].size > 0
run_handler("thumbnail", {"customer": "c-1"})
assert run_handler("pdf.render", {"chapters": [1, 2]}).result == {"pages": 2}
print("handlers ok")
"""


def snippets() -> tuple[dict[str, str], list[str]]:
    """The documents' files (by path) and scripts, in order."""
    files: dict[str, str] = {}
    scripts: list[str] = []
    for document in DOCUMENTS:
        for block in BLOCK.findall(document.read_text()):
            header = FILE_HEADER.match(block)
            if header:
                assert header[1] not in files, f"two snippets are {header[1]}"
                files[header[1]] = block
            else:
                scripts.append(block)
    return files, scripts


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_every_snippet_is_a_file_or_a_script_that_compiles() -> None:
    """Guards the rule the next test relies on: no fragment (a `...` body, a bare
    `await`) that only a reader could complete."""
    files, scripts = snippets()
    assert {
        "mypkg/jobs.py",
        "mypkg/pdfs.py",
        "mypkg/reports.py",
        "mypkg/workflows.py",
        "tests/test_reports.py",
    } <= set(files)
    assert scripts, "the README's client example"
    for name, code in [*files.items(), *((f"script {i}", s) for i, s in enumerate(scripts))]:
        compile(code, name, "exec")


def test_the_snippets_run_as_pasted(tmp_path: Path) -> None:
    """Guards issue 23, item 2: the docs' handler tests pass, the README's handlers run, and
    the README's client script runs against `conveyor dev` and prints typed values (enum
    names, ints kept ints)."""
    files, scripts = snippets()
    app = tmp_path / "app"
    for name, code in files.items():
        path = app / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
    (app / "mypkg" / "__init__.py").write_text("")
    env, api = dev_env(tmp_path)
    del env["CONVEYOR_DATA_DIR"]  # dev's own default: .conveyor in the app's folder
    python = [sys.executable]

    # Its own --basetemp: without one the inner pytest resets /tmp/pytest-of-<user> to 0700,
    # which the suite's PostgreSQL (running as another user, its data dir below there)
    # then cannot read (a PANIC at its next checkpoint, and every later test fails).
    inner = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "t")]
    assert "passed" in run([*python, *inner], app, env)
    assert "handlers ok" in run([*python, "-c", HANDLER_RUNS], app, env)

    log = tmp_path / "dev.log"
    mailbox = Mailbox()
    mailbox.start()
    env.update(mailbox.env)
    handlers = "mypkg.reports,mypkg.workflows"
    with log.open("wb") as out:
        dev = subprocess.Popen([CONVEYOR, "dev", "--handlers", handlers], cwd=app,
                               env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        assert wait_serving(api, timeout=60), log.read_text()
        client_env = {**env, "CONVEYOR_API_KEY": DEV_KEY}
        printed = [run([*python, "-c", script], app, client_env) for script in scripts]
        mail = mailbox.wait_for("Your orders export")
        text = mail.message.get_body(preferencelist=("plain",))
        assert text is not None
        link = _link_in(text.get_content())
        with urllib.request.urlopen(link, timeout=10) as response:  # while dev serves it
            bundle = zipfile.ZipFile(io.BytesIO(response.read()))
    finally:
        dev.send_signal(signal.SIGINT)
        assert dev.wait(30) == 0, log.read_text()
        mailbox.stop()
    workflows = [b for b in BLOCK.findall(DOCUMENTS[-1].read_text()) if not FILE_HEADER.match(b)]
    _check_workflows("".join(printed[-len(workflows) :]))  # the last document's scripts
    assert bundle.namelist() == ["orders.csv"]
    assert bundle.read("orders.csv").decode().splitlines()[0] == "order,customer,total"
    client = printed[0]
    assert re.search(r"^\d+ SUCCEEDED 100%$", client, re.M), client
    assert "\n2 two.csv\n" in client, client
    assert "1000 QUEUED {'i': 999}" in client, client


def _link_in(text: str) -> str:
    found = re.search(r"https?://\S+", text)
    assert found, text
    return found[0]


def _check_workflows(printed: str) -> None:
    """docs/workflows.md's scripts printed what their comments say (issue 25, item 6): the
    export -> bundle -> email DAG succeeded, a waiting job said why, a failed dependency
    cancelled one dependent and not the RUN_ANYWAY one, a retry revived the cancelled one,
    in-call indexes made a fan-in, and a batch's callback saw its counts."""
    for line in (
        "mail SUCCEEDED", "SCHEDULED", "1 1", "then CANCELLED", "anyway SUCCEEDED 1", "6",
        "6 True", "5 1 0", "5 1 0 True",
    ):  # fmt: skip
        assert re.search(rf"^{re.escape(line)}$", printed, re.M), (line, printed)
    assert re.findall(r"^(True|False)$", printed, re.M) == ["True"] * 4, printed

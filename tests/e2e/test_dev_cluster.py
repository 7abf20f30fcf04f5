"""`conveyor dev --redis-cluster`: the dev stack on a local Redis Cluster (3 primaries and 3
replicas in the data folder). A job submitted through the client is watched to SUCCEEDED;
Ctrl-C stops the services and every node; a second run on the same data folder (which holds
the first run's cluster) works too, and leaves one cluster's nodes there, not two."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import psutil
import redis

from conveyor.cli.dev import wait_serving
from conveyor.client import Client, Job, JobState
from tests.e2e.test_dev import DEV_KEY, dev_env
from tests.processes import CONVEYOR

S = JobState
TERMINAL = {S.SUCCEEDED, S.DEAD, S.CANCELLED}


def run_a_job(api: str) -> Job:
    """Submit a short job through the client and follow its stream until it ends."""
    with Client(api, api_key=DEV_KEY) as client:
        job = client.submit("sleep", {"seconds": 0.1})
        for update in client.watch(job.id):
            if update.job.state in TERMINAL:
                return update.job
    raise AssertionError(f"the stream of {job.id} ended before the job did")


def node_ports(nodes: list[psutil.Process]) -> list[int]:
    """The client port of each Redis node: the lower of the two it listens on (its cluster
    bus is that + 10000)."""
    return [
        min(c.laddr.port for c in node.net_connections("tcp") if c.status == psutil.CONN_LISTEN)
        for node in nodes
    ]


def check_cluster(ports: list[int]) -> None:
    """The nodes form one healthy cluster of 3 primaries and 3 replicas."""
    with redis.Redis(port=ports[0], decode_responses=True) as node:
        info = node.execute_command("CLUSTER INFO")
    assert info["cluster_state"] == "ok", info
    assert (int(info["cluster_size"]), int(info["cluster_known_nodes"])) == (3, 6), info


def check_banner(ports: list[int], banner: str) -> None:
    """The banner names each node as a seed (rich wraps long lines: whitespace is ignored).
    Read once `conveyor dev` has exited: its output to a file is buffered until then."""
    assert "Redis Cluster" in banner, banner
    flat = "".join(banner.split())
    for port in ports:
        assert f"redis://127.0.0.1:{port}" in flat, f"the banner does not name node {port}"


def run_dev_once(tmp_path: Path, name: str) -> None:
    """One `conveyor dev --redis-cluster` in tmp_path/data: a job succeeds on the cluster,
    Ctrl-C exits 0 and leaves no service or Redis node running."""
    env, api = dev_env(tmp_path)
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [CONVEYOR, "dev", "--redis-cluster"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        assert wait_serving(api, timeout=60), log.read_text()
        assert run_a_job(api).state == S.SUCCEEDED, log.read_text()
        children = psutil.Process(dev.pid).children(recursive=True)
        nodes = [c for c in children if c.name().startswith("redis-server")]
        assert len(nodes) == 6, [c.name() for c in children]
        ports = node_ports(nodes)
        check_cluster(ports)
    finally:
        dev.send_signal(signal.SIGINT)
        code = dev.wait(30)
    assert code == 0, log.read_text()
    check_banner(ports, log.read_text())
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


def test_dev_on_a_redis_cluster_runs_jobs_and_starts_again(tmp_path: Path) -> None:
    run_dev_once(tmp_path, "first")
    run_dev_once(tmp_path, "second")
    nodes = sorted(p.name for p in (tmp_path / "data" / "redis-cluster").iterdir())
    assert len(nodes) == 6, f"the first run's cluster was left beside the second's: {nodes}"

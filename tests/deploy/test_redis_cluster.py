"""The Redis Cluster variants of deploy/: compose's `redis-cluster` profile (six nodes and a
one-shot that joins them, switched on with `redis-cluster.env`) and the Kubernetes component
that points the services at an external cluster. Both must leave the services configured for
a cluster (CONVEYOR_REDIS_CLUSTER, seeds naming the nodes) and still match their schemas; the
compose one-shot's script is run against six real Redis nodes."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import redis

from conveyor.embedded import EmbeddedRedis, find_redis_cli, free_cluster_port
from conveyor.redis.connection import seed_nodes
from tests.deploy.compose import (
    COMPOSE_VARIANTS,
    _compose_settings,
    _depends_on,
    _enabled_services,
    _environment,
    _healthcheck_test,
    _host_path,
    _interpolated_compose,
    _optional_dependencies,
    _profiles,
)
from tests.deploy.kubernetes import (
    BASE,
    K8S_VARIANTS,
    _component,
    _k8s_docs,
    _k8s_settings,
    _kustomization,
    _of_kind,
    _patch_target,
    _patches,
    _servers,
)
from tests.deploy.manifests import (
    COMPOSE_FILE,
    K8S_DIR,
    REDIS_CLUSTER_PROFILE,
    SERVICE_ADDR,
    _list,
    _map,
)

CLUSTER_ENV = COMPOSE_VARIANTS[REDIS_CLUSTER_PROFILE]
INIT = "redis-cluster-init"
# The Kubernetes variant, and the folder of its component under deploy/k8s.
COMPONENT = "redis-cluster"
COMPONENT_PATH = f"components/{COMPONENT}"
KUSTOMIZATION = "kustomization.yaml"
# Three primaries with one replica each.
NODES = 6
REPLICAS = 1


def _redis_conf(svc: dict[str, Any]) -> dict[str, str]:
    """The configuration a `redis-server` service runs with, as Redis reads it: the file named
    first (bind-mounted), then `--directive value` arguments over it."""
    command = [str(a) for a in _list(svc.get("command"), "command")]
    assert command[0] == "redis-server", command
    args = command[1:]
    conf = {}
    if args and not args[0].startswith("--"):
        path = _host_path(svc, args.pop(0))
        assert path is not None and path.is_file(), f"{command[1]} is not mounted"
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition(" ")
                conf[key] = value.strip()
    assert len(args) % 2 == 0 and all(a.startswith("--") for a in args[::2]), command
    conf |= {
        key.removeprefix("--"): value for key, value in zip(args[::2], args[1::2], strict=True)
    }
    return conf


def _cluster_nodes() -> dict[str, dict[str, Any]]:
    """The services of the cluster variant that run a Redis Cluster node."""
    return {
        name: svc
        for name, svc in _enabled_services(CLUSTER_ENV).items()
        if svc.get("command", [None])[0] == "redis-server"
        and _redis_conf(svc).get("cluster-enabled") == "yes"
    }


def _node_port(svc: dict[str, Any]) -> int:
    return int(_redis_conf(svc).get("port", "6379"))


def test_compose_cluster_env_file_switches_profile_and_services() -> None:
    """redis-cluster.env turns on the profile and sets only variables compose.yaml reads; the
    profile adds the nodes and the one-shot, nothing else; with it every service that uses
    Redis is on the cluster, seeded with every node, and waits until the cluster is made."""
    assert _profiles(CLUSTER_ENV) == {REDIS_CLUSTER_PROFILE}
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for key in CLUSTER_ENV.keys() - {"COMPOSE_PROFILES"}:
        assert re.search(r"\$\{" + key + r"\b", text), f"compose.yaml does not read {key}"
    added = _enabled_services(CLUSTER_ENV).keys() - _enabled_services({}).keys()
    nodes = _cluster_nodes()
    assert added == {*nodes, INIT}, sorted(added)
    seeds = sorted((name, _node_port(svc)) for name, svc in nodes.items())
    for name in SERVICE_ADDR:
        settings = _compose_settings(name, CLUSTER_ENV)
        assert settings.redis_cluster, name
        assert sorted(seed_nodes(settings.redis_url)) == seeds, f"{name}: {settings.redis_url}"
        svc = _enabled_services(CLUSTER_ENV)[name]
        assert _depends_on(svc).get(INIT) == "service_completed_successfully", name
        # Without the profile the one-shot is disabled: the dependency must be optional.
        assert INIT in _optional_dependencies(svc), name
        single = _compose_settings(name)
        assert not single.redis_cluster and single.redis_url == "redis://redis:6379/0", name


def test_compose_cluster_nodes() -> None:
    """Six nodes of the official redis:7 image, cluster-enabled, each announcing its own name
    to clients (who reach it on the default network), with a fixed address on the cluster bus
    so that nodes.conf stays right across restarts."""
    nodes = _cluster_nodes()
    assert len(nodes) == NODES, sorted(nodes)
    compose = _interpolated_compose(CLUSTER_ENV)
    [bus] = {
        network
        for svc in nodes.values()
        for network in _map(svc["networks"], "networks")
        if network != "default"
    }
    [pool] = _map(compose["networks"][bus], bus)["ipam"]["config"]
    subnet, dynamic = ipaddress.ip_network(pool["subnet"]), ipaddress.ip_network(pool["ip_range"])
    assert dynamic.subnet_of(subnet)  # type: ignore[arg-type]
    addresses = set()
    for name, svc in nodes.items():
        assert str(svc["image"]).split(":")[:2] == ["redis", "7"], f"{name}: {svc['image']}"
        conf = _redis_conf(svc)
        assert conf.get("cluster-config-file"), f"{name} keeps no cluster state"
        assert conf.get("cluster-preferred-endpoint-type") == "hostname", name
        announced = conf.get("cluster-announce-hostname")
        assert announced == name, f"{name} announces itself as {announced}"
        check = _healthcheck_test(svc)
        assert check is not None and check[1:] == ["redis-cli", "ping"], name
        networks = _map(svc["networks"], f"{name} networks")
        assert networks.keys() == {"default", bus}, f"{name}: clients cannot reach it"
        address = ipaddress.ip_address(networks[bus]["ipv4_address"])
        assert address in subnet and address not in dynamic, f"{name}: {address}"
        addresses.add(address)
    assert len(addresses) == NODES, "two nodes share an address"


def test_compose_cluster_init_joins_every_node_once_they_are_up() -> None:
    init = _enabled_services(CLUSTER_ENV)[INIT]
    nodes = _cluster_nodes()
    assert str(init["image"]).split(":")[:2] == ["redis", "7"]
    command = [str(a) for a in init["command"]]
    assert command[0] == "sh", command
    script = _host_path(init, command[1])
    assert script is not None and script.is_file(), f"{command[1]} is not mounted"
    assert sorted(command[2:]) == sorted(f"{n}:{_node_port(s)}" for n, s in nodes.items())
    assert f"--cluster-replicas {REPLICAS}" in script.read_text(encoding="utf-8")
    assert NODES % (1 + REPLICAS) == 0
    assert _depends_on(init) == dict.fromkeys(nodes, "service_healthy")
    assert str(init.get("restart", "no")) == "no", "a one-shot that restarts never completes"
    # On the bus only: the names it resolves are the nodes' bus addresses.
    bus = {n for svc in nodes.values() for n in svc["networks"]} - {"default"}
    assert set(_list(init["networks"], "networks")) == bus
    assert not _environment(init), "the script takes its nodes as arguments"


def init_script() -> Path:
    init = _enabled_services(CLUSTER_ENV)[INIT]
    path = _host_path(init, str(init["command"][1]))
    assert path is not None
    return path


def test_compose_cluster_init_script_against_real_nodes(tmp_path: Path) -> None:
    """The one-shot's script makes a cluster of six fresh cluster-enabled nodes (3 primaries,
    3 replicas) that every node agrees on when it exits and, run again on the same nodes,
    changes nothing and succeeds: compose runs it on every `up`."""
    args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
    env = {**os.environ, "PATH": f"{find_redis_cli().parent}{os.pathsep}{os.environ['PATH']}"}
    with contextlib.ExitStack() as stack:
        nodes = [
            stack.enter_context(
                EmbeddedRedis(tmp_path / f"node-{i}", port=free_cluster_port(), args=args)
            )
            for i in range(NODES)
        ]
        command = ["sh", str(init_script()), *(f"127.0.0.1:{n.port}" for n in nodes)]
        views = []
        for _ in range(2):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            # Every node at once, as the services find them after the one-shot exits (CI
            # once caught the last node still knowing 5 of 6 when the script waited on one).
            for node in nodes:
                with redis.Redis(port=node.port, decode_responses=True) as client:
                    info = client.execute_command("CLUSTER INFO")
                    view = sorted(client.execute_command("CLUSTER NODES"))
                assert info["cluster_state"] == "ok", (node.port, info)
                assert int(info["cluster_size"]) == NODES // (1 + REPLICAS), (node.port, info)
                assert int(info["cluster_known_nodes"]) == NODES, (node.port, info)
            views.append(view)
    assert views[0] == views[1], "the second run changed the cluster"


def test_k8s_redis_cluster_component_is_offered_and_only_patches() -> None:
    """kustomization.yaml offers every component (commented out), and the Redis Cluster one
    deploys nothing: it patches documents of the base, the ConfigMap's and Secret's values."""
    folders = {p.name for p in (K8S_DIR / "components").iterdir()}
    assert folders == set(K8S_VARIANTS) - {BASE}
    assert "components" not in _kustomization()
    component = _component(COMPONENT_PATH)
    assert component.keys() == {"apiVersion", "kind", "patches"}, sorted(component)
    assert (component["apiVersion"], component["kind"]) == (
        "kustomize.config.k8s.io/v1alpha1",
        "Component",
    )
    listed = {K8S_DIR / COMPONENT_PATH / str(p["path"]) for p in component["patches"]}
    on_disk = set((K8S_DIR / COMPONENT_PATH).glob("*.yaml")) - {
        K8S_DIR / COMPONENT_PATH / KUSTOMIZATION
    }
    assert listed == on_disk, sorted(p.name for p in on_disk ^ listed)
    base = {_patch_target(doc) for doc in _k8s_docs()}
    for patch in _patches(COMPONENT_PATH):
        assert _patch_target(patch) in base, f"{_patch_target(patch)} is not in the base"
        assert "namespace" not in patch["metadata"], "the base's namespace applies"
        assert patch.keys() <= {"apiVersion", "kind", "metadata", "data", "stringData"}


def test_k8s_redis_cluster_component_points_every_pod_at_the_cluster() -> None:
    for doc in _servers(COMPONENT):
        name = doc["metadata"]["name"]
        single, cluster = _k8s_settings(doc), _k8s_settings(doc, COMPONENT)
        assert not single.redis_cluster and cluster.redis_cluster, name
        assert cluster.redis_url != single.redis_url, f"{name} keeps the single Redis"
        seeds = seed_nodes(cluster.redis_url)
        for host, port in seeds:
            assert host not in {"127.0.0.1", "localhost"} and port > 0, f"{name}: {host}"
    [secret] = _of_kind("Secret", COMPONENT).values()
    assert "CONVEYOR_REDIS_URL" in secret["stringData"]

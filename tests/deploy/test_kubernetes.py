"""deploy/k8s: every manifest matches its schema, and they agree with each other and with
the configured addresses (probes, metrics ports, selectors, references, autoscaling, budgets)."""

from __future__ import annotations

import copy
import re
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import pytest

from tests.deploy.compose import _metrics_addr
from tests.deploy.kubernetes import (
    K8S_VARIANTS,
    _containers,
    _k8s_docs,
    _k8s_files,
    _k8s_schema_errors,
    _k8s_settings,
    _kustomization,
    _min_replicas,
    _of_kind,
    _pod_spec,
    _port_ids,
    _scale_target,
    _scaled_object,
    _servers,
    _structural_to_json_schema,
    _workloads,
)
from tests.deploy.manifests import (
    ALLOWED_CONVEYOR_VARS,
    API_CLIENTS,
    ENV_PREFIX,
    K8S_DIR,
    METRICS_PORT,
    PROBES,
    REQUIRED_SECRETS,
    SECRET_VARS,
    SERVICE_ADDR,
    SERVICE_PORT,
    Mutation,
    _host_port,
    _list,
    _map,
)
from tests.deploy.promql import _metric_family, _promql_metrics, _promql_problems


def test_kustomization_files_exist_and_none_is_left_out() -> None:
    listed = _k8s_files()
    for path in listed:
        assert path.is_file(), f"kustomization.yaml lists missing {path.name}"
    on_disk = {p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert on_disk == set(listed), f"not listed: {sorted(p.name for p in on_disk - set(listed))}"


def test_k8s_documents_are_well_formed() -> None:
    seen: set[tuple[str, str]] = set()
    for doc in _k8s_docs():
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], doc
        assert isinstance(doc.get("kind"), str) and doc["kind"], doc
        name = _map(doc.get("metadata"), "metadata").get("name")
        assert isinstance(name, str) and name, f"{doc['kind']} without metadata.name"
        key = (doc["kind"], name)
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
    namespaces = _of_kind("Namespace")
    assert list(namespaces) == [_kustomization()["namespace"]]


def test_k8s_has_the_parts() -> None:
    deployments = _of_kind("Deployment")
    assert set(deployments) == {
        "conveyor-api",
        "conveyor-worker",
        "conveyor-scheduler",
        *(f"conveyor-{name}" for name in API_CLIENTS),
    }
    # The api's HPA owns its replica count (a `replicas` would reset it on every apply).
    assert "replicas" not in deployments["conveyor-api"]["spec"]
    [api_hpa] = _of_kind("HorizontalPodAutoscaler").values()
    assert api_hpa["spec"]["minReplicas"] == 2
    assert deployments["conveyor-scheduler"]["spec"]["replicas"] == 2
    assert _pod_spec(deployments["conveyor-worker"])["terminationGracePeriodSeconds"] == 60
    for name, doc in deployments.items():
        [container] = _containers(doc)
        assert container["args"] == [name.removeprefix("conveyor-")]
    [job] = _of_kind("Job").values()
    assert [c["args"] for c in _containers(job)] == [["migrate"]]
    assert set(_of_kind("PodDisruptionBudget")) == {"conveyor-api", "conveyor-worker"}


@pytest.mark.parametrize("variant", K8S_VARIANTS)
def test_k8s_conveyor_vars_are_known(variant: str) -> None:
    [config] = _of_kind("ConfigMap", variant).values()
    [secret] = _of_kind("Secret", variant).values()
    config_vars = set(_map(config["data"], "ConfigMap data"))
    secret_vars = set(_map(secret.get("stringData", secret.get("data")), "Secret data"))
    env_vars = {
        str(_map(e, "env")["name"])
        for doc in _workloads(variant)
        for c in _containers(doc)
        for e in c.get("env", [])
    }
    for where, names in [("ConfigMap", config_vars), ("Secret", secret_vars), ("env", env_vars)]:
        conveyor = {n for n in names if n.startswith("CONVEYOR_")}
        assert conveyor <= ALLOWED_CONVEYOR_VARS, (
            f"{where}: {sorted(conveyor - ALLOWED_CONVEYOR_VARS)}"
        )
    assert not config_vars & SECRET_VARS, "secrets in the ConfigMap"
    assert not env_vars & SECRET_VARS, "secrets as plain env values"
    assert secret_vars >= REQUIRED_SECRETS
    required = {
        "CONVEYOR_API_ADDR",
        "CONVEYOR_WORKER_ADDR",
        "CONVEYOR_SCHEDULER_ADDR",
        "CONVEYOR_WORKER_CONCURRENCY",
        "CONVEYOR_HANDLERS",
        "CONVEYOR_LOG_FORMAT",
    }
    assert config_vars >= required
    for name, field in SERVICE_ADDR.items():
        addr = config["data"][f"{ENV_PREFIX}{field}".upper()]
        assert _host_port(addr) == ("0.0.0.0", SERVICE_PORT[name]), f"ConfigMap: {name} on {addr}"


@pytest.mark.parametrize("variant", K8S_VARIANTS)
def test_k8s_settings_validate(variant: str) -> None:
    for doc in _workloads(variant):
        settings = _k8s_settings(doc, variant)
        assert settings.log_format in {"json", "console"}, doc["metadata"]["name"]
        assert settings.redis_cluster is (variant == "redis-cluster"), doc["metadata"]["name"]


@pytest.mark.parametrize("variant", K8S_VARIANTS)
def test_k8s_env_from_references_exist(variant: str) -> None:
    configmaps, secrets = set(_of_kind("ConfigMap", variant)), set(_of_kind("Secret", variant))
    for doc in _workloads(variant):
        for container in _containers(doc):
            refs = container.get("envFrom", [])
            assert refs, f"{container['name']} gets no configuration"
            for ref in refs:
                if "configMapRef" in ref:
                    assert ref["configMapRef"]["name"] in configmaps
                else:
                    assert ref["secretRef"]["name"] in secrets


def test_k8s_probes_match_container_ports() -> None:
    probed: dict[str, set[int | str]] = {}
    for name, doc in _of_kind("Deployment").items():
        for container in _containers(doc):
            ports = _port_ids(container)
            for probe_name in PROBES:
                probe = container.get(probe_name)
                if probe is None:
                    continue
                [(handler, spec)] = [
                    (k, v) for k, v in probe.items() if k in {"grpc", "httpGet", "tcpSocket"}
                ]
                port = spec["port"]
                assert port in ports, f"{name}/{probe_name} probes {port}, container has {ports}"
                probed.setdefault(name, set()).add(port)
                if handler == "grpc":
                    assert isinstance(port, int), "grpc probes take a port number"
    assert probed == {
        **{f"conveyor-{name}": {port} for name, port in SERVICE_PORT.items()},
        **{f"conveyor-{name}": {"http"} for name in API_CLIENTS},
    }
    # And the port probed is the one the process serves on, on every interface.
    for name, field in SERVICE_ADDR.items():
        addr = getattr(_k8s_settings(_of_kind("Deployment")[f"conveyor-{name}"]), field)
        assert _host_port(addr) == ("0.0.0.0", SERVICE_PORT[name]), f"{name} serves on {addr}"


def test_k8s_selectors_match_their_pods() -> None:
    deployments = _of_kind("Deployment")
    pod_labels = {
        name: _map(doc["spec"]["template"]["metadata"]["labels"], "labels")
        for name, doc in deployments.items()
    }
    for name, doc in deployments.items():
        selector = _map(doc["spec"]["selector"]["matchLabels"], "matchLabels")
        assert selector.items() <= pod_labels[name].items(), f"{name} does not select its pods"

    def selected(selector: dict[str, Any]) -> list[str]:
        return [n for n, labels in pod_labels.items() if selector.items() <= labels.items()]

    for name, service in _of_kind("Service").items():
        [target] = selected(_map(service["spec"]["selector"], "selector"))
        [container] = _containers(deployments[target])
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in _port_ids(container), f"Service {name}: {port}"
    assert [p["port"] for p in _of_kind("Service")["conveyor-api"]["spec"]["ports"]] == [50051]
    for name, pdb in _of_kind("PodDisruptionBudget").items():
        assert len(selected(pdb["spec"]["selector"]["matchLabels"])) == 1, f"PDB {name}"


def test_k8s_hpa_scales_the_api_on_cpu() -> None:
    [hpa] = _of_kind("HorizontalPodAutoscaler").values()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "conveyor-api")
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_k8s_workers_scale_with_keda_not_a_plain_hpa() -> None:
    """KEDA creates the HPA for its target itself: a second HPA on the same Deployment would
    fight it over the replica count."""
    scaled = _scaled_object()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = _scale_target(spec["scaleTargetRef"])
    assert target == ("Deployment", "conveyor-worker")
    assert target[1] in _of_kind("Deployment")
    hpa_targets = {
        _scale_target(hpa["spec"]["scaleTargetRef"])
        for hpa in _of_kind("HorizontalPodAutoscaler").values()
    }
    assert target not in hpa_targets, "conveyor-worker has a plain HPA as well as KEDA's"
    # The ScaledObject owns the count; a `replicas` here would undo it on every apply.
    assert "replicas" not in _of_kind("Deployment")[target[1]]["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert isinstance(spec.get("cooldownPeriod"), int)


def test_k8s_keda_triggers_measure_the_workers_queues() -> None:
    spec = _scaled_object()["spec"]
    triggers = {t["type"]: t for t in spec["triggers"]}
    assert sorted(triggers) == ["cpu", "prometheus"], sorted(triggers)
    prometheus = triggers["prometheus"]["metadata"]
    server = urlsplit(prometheus["serverAddress"])
    assert server.scheme in {"http", "https"} and server.hostname, prometheus["serverAddress"]
    query = prometheus["query"]
    problems = _promql_problems(query)
    assert not problems, f"{query}: {problems}"
    metrics = {_metric_family(name) for name, _ in _promql_metrics(query)}
    assert "conveyor_queue_depth" in metrics, f"{query} does not measure the queue"
    # Every queue the query names is one the workers serve (the api reports all queues).
    worker = _of_kind("Deployment")["conveyor-worker"]
    queues = set(re.findall(r'\bqueue\s*=\s*"([^"]*)"', query))
    assert queues and queues <= set(_k8s_settings(worker).queue_list), (queues, "worker queues")
    # ceil(ready + running jobs / threshold) workers: the threshold is one worker's slots.
    threshold = float(prometheus["threshold"])
    assert threshold == _k8s_settings(worker).worker_concurrency, "threshold != worker concurrency"
    cpu = triggers["cpu"]
    assert cpu.get("metricType") == "Utilization"
    assert 0 < int(cpu["metadata"]["value"]) <= 100
    # KEDA's cpu trigger, like an HPA's, needs CPU requests to compute utilisation.
    [container] = _containers(worker)
    assert "cpu" in container["resources"]["requests"]


def test_k8s_disruption_budgets_fit_the_smallest_scale() -> None:
    """At its autoscaler's minimum, a drain may still evict a pod and leaves at least one."""
    deployments = _of_kind("Deployment")
    checked = set()
    for name, pdb in _of_kind("PodDisruptionBudget").items():
        selector = pdb["spec"]["selector"]["matchLabels"].items()
        [target] = [
            n
            for n, d in deployments.items()
            if selector <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        low = _min_replicas(target)
        spec = pdb["spec"]
        if "maxUnavailable" in spec:
            unavailable = spec["maxUnavailable"]
            assert isinstance(unavailable, int), f"PDB {name}: use a number"
            assert 1 <= unavailable < low, f"PDB {name}: {unavailable} of {low} may go"
        else:
            available = spec["minAvailable"]
            assert isinstance(available, int), f"PDB {name}: use a number"
            assert 1 <= available < low, f"PDB {name}: {available} of {low} must stay"
        checked.add(target)
    assert checked == {"conveyor-api", "conveyor-worker"}


@pytest.mark.parametrize("name", list(SERVICE_ADDR))
def test_k8s_metrics_port_and_scrape_annotations_agree(name: str) -> None:
    deployment = _of_kind("Deployment")[f"conveyor-{name}"]
    host, port = _metrics_addr(_k8s_settings(deployment))
    assert (host, port) == ("0.0.0.0", METRICS_PORT), f"{name} serves metrics on {host}:{port}"
    [container] = _containers(deployment)
    named = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert named.get("metrics") == port, f"{name}: container ports {named}"
    annotations = _map(deployment["spec"]["template"]["metadata"].get("annotations"), "annotations")
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_k8s_configures_the_object_store_and_smtp() -> None:
    """Pods have a read-only root filesystem and share nothing, so the object store must be S3;
    credentials come from the Secret."""
    [secret] = _of_kind("Secret").values()
    secret_vars = set(_map(secret["stringData"], "stringData"))
    assert {
        "CONVEYOR_S3_ACCESS_KEY",
        "CONVEYOR_S3_SECRET_KEY",
        "CONVEYOR_SMTP_USERNAME",
        "CONVEYOR_SMTP_PASSWORD",
    } <= secret_vars
    for doc in _servers():
        settings = _k8s_settings(doc)
        name = doc["metadata"]["name"]
        assert urlsplit(settings.s3_endpoint).scheme in {"http", "https"}, f"{name}: no S3"
        assert settings.s3_bucket and settings.s3_access_key and settings.s3_secret_key, name
        assert settings.smtp_host not in {"", "127.0.0.1", "localhost"}, f"{name}: SMTP is local"
        assert not (settings.smtp_ssl and settings.smtp_starttls), name


def test_structural_schema_conversion() -> None:
    converted = _structural_to_json_schema(
        {
            "type": "object",
            "properties": {
                "a": {"type": "object", "properties": {"b": {"type": "string"}}},
                "m": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "n": {"type": "string", "x-kubernetes-int-or-string": True},
            },
        }
    )
    validator = jsonschema.Draft7Validator(converted)
    assert validator.is_valid({"a": {"b": "x"}, "m": {"k": "v"}, "free": {"any": 1}, "n": 3})
    assert not validator.is_valid({"a": {"c": "x"}})
    assert not validator.is_valid({"m": {"k": 1}})
    assert not validator.is_valid({"extra": 1})


@pytest.mark.parametrize("variant", K8S_VARIANTS)
def test_k8s_documents_match_their_schemas(variant: str) -> None:
    kinds: set[str] = set()
    for doc in _k8s_docs(variant):
        errors = _k8s_schema_errors(doc)
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: {errors}"
        kinds.add(doc["kind"])
    assert kinds == {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Job",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ScaledObject",
    }


def test_k8s_schema_check_catches_mistakes() -> None:
    """The schema checks are not vacuous: an unknown field, a wrong type and KEDA's classic
    mix-up with the HPA's field names are refused."""
    deployment = _of_kind("Deployment")["conveyor-worker"]
    scaled = _scaled_object()
    mutations: list[tuple[dict[str, Any], Mutation]] = [
        (deployment, lambda d: _pod_spec(d)["containers"][0].update(imagePulPolicy="Always")),
        (deployment, lambda d: _pod_spec(d)["containers"][0]["ports"][0].update(containerPort="x")),
        (deployment, lambda d: d["spec"]["template"]["metadata"]["annotations"].update(p=9100)),
        (scaled, lambda d: d["spec"].update(minReplicas=2)),
        (scaled, lambda d: d["spec"]["triggers"][0]["metadata"].update(threshold=10)),
        (scaled, lambda d: d["spec"]["scaleTargetRef"].pop("name")),
    ]
    for doc, mutate in mutations:
        broken = copy.deepcopy(doc)
        mutate(broken)
        assert _k8s_schema_errors(broken), f"a broken {doc['kind']} passed its schema"


def test_k8s_pods_are_non_root_and_bounded() -> None:
    image = _list(_kustomization()["images"], "images")[0]["name"]
    for doc in _workloads():
        name = doc["metadata"]["name"]
        assert _pod_spec(doc)["securityContext"]["runAsNonRoot"] is True, name
        for container in _containers(doc):
            assert container["image"] == image, f"{name}: kustomization does not set its image"
            resources = _map(container.get("resources"), f"{name} resources")
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= _map(resources.get(part), f"{name} {part}").keys()
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_k8s_dashboard_is_a_client_of_the_api_service() -> None:
    """The dashboard reaches the api through its Service, serves HTTP on every interface of
    the port its Service and probes name, and gets none of the Secret (it holds no credentials
    but its users' keys, in memory)."""
    deployment = _of_kind("Deployment")["conveyor-dashboard"]
    settings = _k8s_settings(deployment)
    assert settings.api_addr == "conveyor-api:50051"
    assert _host_port(settings.dashboard_addr) == ("0.0.0.0", API_CLIENTS["dashboard"])
    [container] = _containers(deployment)
    assert all("secretRef" not in ref for ref in container["envFrom"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    service = _of_kind("Service")["conveyor-dashboard"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"

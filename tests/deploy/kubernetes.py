"""Reading deploy/k8s as Kubernetes does: documents by kind, pod specs, environment,
ports, autoscaling, and the Kubernetes and KEDA schemas. A helper, not a test."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import yaml

from conveyor.config import Settings
from tests.deploy.compose import _json_schema, _schema_errors
from tests.deploy.image import _image_env
from tests.deploy.manifests import (
    API_CLIENTS,
    K8S_DIR,
    K8S_VERSIONS,
    KEDA_SCALEDOBJECT_SCHEMA,
    WORKLOAD_KINDS,
    _list,
    _load,
    _map,
    _settings,
)

# How deploy/k8s can be applied: as it is ("base"), or with one of the components its
# kustomization.yaml offers, commented out, switched on (named after the component's folder).
BASE = "base"
K8S_VARIANTS = (BASE, "redis-cluster")


def _kustomization(variant: str = BASE) -> dict[str, Any]:
    """kustomization.yaml; for a component's variant, with its commented-out `components:`
    entry switched on, as the comment there says to."""
    path = K8S_DIR / "kustomization.yaml"
    if variant == BASE:
        [doc] = _load(path)
        return _map(doc, "kustomization.yaml")
    entry = f"components/{variant}"
    lines = path.read_text(encoding="utf-8").splitlines()
    switched = [
        line.replace("# ", "", 1) if line.strip() in {"# components:", f"#   - {entry}"} else line
        for line in lines
    ]
    doc = _map(yaml.safe_load("\n".join(switched)), "kustomization.yaml")
    assert doc.get("components") == [entry], f"kustomization.yaml offers no {entry}"
    return doc


def _k8s_files() -> list[Path]:
    return [K8S_DIR / str(r) for r in _list(_kustomization()["resources"], "resources")]


def _component(name: str) -> dict[str, Any]:
    """A component's kustomization.yaml (`name`: its folder, as kustomization.yaml lists it)."""
    [doc] = _load(K8S_DIR / name / "kustomization.yaml")
    return _map(doc, f"{name}/kustomization.yaml")


def _patches(name: str) -> list[dict[str, Any]]:
    """A component's strategic-merge patches (`patches: - path: …`), as documents."""
    entries = _list(_component(name)["patches"], f"{name} patches")
    return [
        _map(doc, str(entry["path"]))
        for entry in entries
        for doc in _load(K8S_DIR / name / str(_map(entry, "patch")["path"]))
    ]


def _merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` merged into a copy of `base` as a strategic-merge patch does it for mappings
    (lists, which it merges by keys of their own, are not supported here)."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        assert not isinstance(value, list), f"{key}: list patches are not modelled"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _patch_target(patch: dict[str, Any]) -> tuple[str, str]:
    return str(patch["kind"]), str(patch["metadata"]["name"])


def _k8s_docs(variant: str = BASE) -> list[dict[str, Any]]:
    """Every document kustomize builds (before it sets the namespace and image): the
    resources, then each component's patches on the document of the same kind and name."""
    docs = [_map(doc, str(path)) for path in _k8s_files() for doc in _load(path)]
    for name in _kustomization(variant).get("components", []):
        for patch in _patches(str(name)):
            [index] = [i for i, d in enumerate(docs) if _patch_target(d) == _patch_target(patch)]
            docs[index] = _merged(docs[index], patch)
    return docs


def _of_kind(kind: str, variant: str = BASE) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in _k8s_docs(variant) if doc["kind"] == kind}


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return _map(doc["spec"]["template"]["spec"], f"{doc['metadata']['name']} pod spec")


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = _pod_spec(doc)
    found = [*spec.get("initContainers", []), *spec["containers"]]
    return [_map(c, "container") for c in found]


def _workloads(variant: str = BASE) -> list[dict[str, Any]]:
    return [doc for doc in _k8s_docs(variant) if doc["kind"] in WORKLOAD_KINDS]


def _servers(variant: str = BASE) -> list[dict[str, Any]]:
    """The workloads that use the database, Redis and the object store (not API clients)."""
    clients = {f"conveyor-{name}" for name in API_CLIENTS}
    return [doc for doc in _workloads(variant) if doc["metadata"]["name"] not in clients]


def _k8s_uid() -> int:
    uids = {_pod_spec(doc)["securityContext"]["runAsUser"] for doc in _workloads()}
    assert len(uids) == 1, f"pods run as several users: {uids}"
    uid = uids.pop()
    assert isinstance(uid, int)
    return uid


def _k8s_env(doc: dict[str, Any], variant: str = BASE) -> dict[str, str]:
    """What a workload's (single) container's environment is: image ENV, envFrom, then env, in
    that order."""
    [container] = _containers(doc)
    configmaps, secrets = _of_kind("ConfigMap", variant), _of_kind("Secret", variant)
    env = _image_env()
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            env |= {k: str(v) for k, v in configmaps[ref["configMapRef"]["name"]]["data"].items()}
        else:
            secret = secrets[ref["secretRef"]["name"]]
            # A template's stringData; base64 `data` would not be readable here.
            env |= {k: str(v) for k, v in _map(secret["stringData"], "stringData").items()}
    for item in container.get("env", []):
        assert "value" in item, f"{item['name']}: only literal env values are checked"
        env[str(item["name"])] = str(item["value"])
    return env


def _k8s_settings(doc: dict[str, Any], variant: str = BASE) -> Settings:
    """The Settings a workload's container reads."""
    return _settings(_k8s_env(doc, variant))


def _port_ids(container: dict[str, Any]) -> set[int | str]:
    ids: set[int | str] = set()
    for port in container.get("ports", []):
        ids.add(port["containerPort"])
        if "name" in port:
            ids.add(port["name"])
    return ids


def _scaled_object() -> dict[str, Any]:
    [scaled] = _of_kind("ScaledObject").values()
    return scaled


def _scale_target(ref: dict[str, Any]) -> tuple[str, str]:
    """(kind, name) of a scaleTargetRef; KEDA's default kind is an apps/v1 Deployment."""
    assert ref.get("apiVersion", "apps/v1") == "apps/v1", ref
    return str(ref.get("kind", "Deployment")), str(ref["name"])


def _min_replicas(deployment: str) -> int:
    """The fewest pods `deployment` runs: its autoscaler's minimum, else its replicas."""
    for scaled in _of_kind("ScaledObject").values():
        if _scale_target(scaled["spec"]["scaleTargetRef"]) == ("Deployment", deployment):
            return int(scaled["spec"].get("minReplicaCount", 0))
    for hpa in _of_kind("HorizontalPodAutoscaler").values():
        if _scale_target(hpa["spec"]["scaleTargetRef"]) == ("Deployment", deployment):
            return int(hpa["spec"].get("minReplicas", 1))
    return int(_of_kind("Deployment")[deployment]["spec"].get("replicas", 1))


def _structural_to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """A CRD's OpenAPI v3 schema as a JSON Schema that, like the API server under kubectl's
    default strict field validation, refuses fields the schema does not declare."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _structural_to_json_schema(s) for name, s in value.items()}
        elif key in {"items", "additionalProperties", "not"} and isinstance(value, dict):
            out[key] = _structural_to_json_schema(value)
        elif key in {"anyOf", "allOf", "oneOf"}:
            out[key] = [_structural_to_json_schema(s) for s in value]
        elif key == "x-kubernetes-int-or-string" and value:
            out["type"] = ["integer", "string"]
        elif not key.startswith("x-kubernetes-") and not (
            key == "type" and node.get("x-kubernetes-int-or-string")
        ):
            out[key] = value
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def _keda_validator() -> Any:
    schema = _structural_to_json_schema(_json_schema(KEDA_SCALEDOBJECT_SCHEMA))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _k8s_schema_errors(doc: dict[str, Any]) -> list[str]:
    """Schema errors of one manifest: KEDA's CRD schema for a ScaledObject, else the
    Kubernetes schemas of every version in K8S_VERSIONS (strict: no unknown fields)."""
    if doc["kind"] == "ScaledObject":
        return _schema_errors(_keda_validator(), doc)
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path) or "(root)"
            errors.append(f"Kubernetes {version}: {path}: {e.message}")
    return errors


def _pre_stop_seconds(deployment: dict[str, Any]) -> float:
    """How long the container's preStop hook pauses (a `sleep`), 0 without one."""
    [container] = _containers(deployment)
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, f"preStop {command}: its length is unknown"
    return float(command[1])

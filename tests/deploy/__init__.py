"""Checks of deploy/: Docker and Kubernetes are not on the test machine, so read the files.

Every YAML file must parse; the compose file must match the Compose Specification's JSON schema
(tests/schemas/, after interpolation as compose does it) and its references (depends_on and
their conditions, mounts, build context, health checks) must point at things that exist; every
CONVEYOR_* variable must be a field of `conveyor.config.Settings` (or one explicitly reserved
for a future issue), and the values each service ends up with must validate; Prometheus must
scrape every Conveyor service on the port CONVEYOR_METRICS_ADDR gives it, and Grafana's
provisioning must load the datasource and the dashboard; the dashboard's PromQL may name only
metrics the code defines, aggregated the way they must be. Every Kubernetes manifest must match
the Kubernetes JSON schema (kubernetes-validate, strict) or, for the KEDA ScaledObject, KEDA's
CRD schema, and they must agree with each other and with the configured addresses (probes,
metrics ports and scrape annotations, selectors and labels, ConfigMap/Secret references, the
kustomization's file list, autoscaling targets and disruption budgets); a worker's drain must
fit in the time it is given before SIGKILL; the Dockerfile must run `conveyor` as a non-root
user. The health-check one-liner is run against a real gRPC health server. The Redis Cluster
variants (compose's `redis-cluster` profile with `redis-cluster.env`, the Kubernetes
`components/redis-cluster`) are checked like the default ones, and the compose cluster's
one-shot script is run against six real Redis nodes.

Tests: `test_variables`, `test_compose`, `test_monitoring` (Prometheus, Grafana provisioning),
`test_dashboards`, `test_promql`, `test_image` (Dockerfile, health one-liner),
`test_kubernetes`, `test_shutdown`, `test_redis_cluster` (both variants). Helpers, not tests:
`manifests` (files, variables, YAML), `compose`, `monitoring`, `promql` (the PromQL reader),
`image`, `kubernetes`.
"""

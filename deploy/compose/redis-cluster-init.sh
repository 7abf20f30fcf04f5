#!/bin/sh
# compose.yaml's redis-cluster-init: joins the nodes given as HOST:PORT arguments into a Redis
# Cluster the first time (as many primaries as a third of them, one replica each), and on every
# start waits until the cluster serves all 16384 slots. Safe to run again: nodes that already
# know their peers are not joined twice.
set -eu

# `redis-cli --cluster create` needs addresses (CLUSTER MEET takes no names): resolve each host
# on the cluster bus, the only network this container is on.
addresses=""
for node in "$@"; do
    address=$(getent hosts "${node%:*}" | head -n 1 | cut -d ' ' -f 1)
    addresses="$addresses $address:${node##*:}"
done
set -- $addresses
first_host=${1%:*}
first_port=${1##*:}

info() {
    redis-cli -h "$first_host" -p "$first_port" cluster info | tr -d '\r'
}

if [ "$(info | sed -n 's/^cluster_known_nodes://p')" = 1 ]; then
    redis-cli --cluster create "$@" --cluster-replicas 1 --cluster-yes
fi

for _ in $(seq 60); do
    if info | grep -qx 'cluster_state:ok'; then
        exit 0
    fi
    sleep 1
done
echo "the Redis Cluster is not ok after 60 s:" >&2
redis-cli -h "$first_host" -p "$first_port" cluster nodes >&2
exit 1

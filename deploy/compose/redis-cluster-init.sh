#!/bin/sh
# compose.yaml's redis-cluster-init: joins the nodes given as HOST:PORT arguments into a Redis
# Cluster the first time (as many primaries as a third of them, one replica each), and on every
# start waits until every node serves all 16384 slots and knows every other node. Safe to run again: nodes that already
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

info() { # HOST:PORT
    redis-cli -h "${1%:*}" -p "${1##*:}" cluster info | tr -d '\r'
}

if [ "$(info "$1" | sed -n 's/^cluster_known_nodes://p')" = 1 ]; then
    redis-cli --cluster create "$@" --cluster-replicas 1 --cluster-yes
fi

# Every node, not just the first: `--cluster create` returns once the first agrees, while the
# others may still be learning their peers by gossip, and the services talk to any of them.
settled() {
    for node in "$@"; do
        view=$(info "$node")
        echo "$view" | grep -qx 'cluster_state:ok' || return 1
        echo "$view" | grep -qx "cluster_known_nodes:$#" || return 1
    done
}

for _ in $(seq 60); do
    if settled "$@"; then
        exit 0
    fi
    sleep 1
done
echo "the Redis Cluster has not settled after 60 s (every node ok and knowing all $#):" >&2
redis-cli -h "$first_host" -p "$first_port" cluster nodes >&2
exit 1

#!/bin/sh
# Starts one member of the replicated Redis: deploy/swarm/stack.yaml ships this file as a config,
# and deploy/k8s/base/redis.yaml carries the same text in a ConfigMap (xtask/tests/contract.rs
# holds them equal).
#
#   redis-start.sh redis-server ARGS...   a Redis server, announced as $HELLO_REDIS_NAME
#   redis-start.sh sentinel               a Sentinel, announced as $HELLO_SENTINEL_NAME
#
# $HELLO_SENTINELS lists the Sentinels' hosts (port 26379), $HELLO_REDIS_FIRST_PRIMARY the server
# that is the primary when nothing else is known.
#
# A server follows the primary the Sentinels name now, so one that restarts after a failover
# rejoins as a replica of the new primary instead of coming back as a second primary (and, on a
# full restart, a stale copy is never the one the others copy from). Only when no Sentinel answers
# within ~10 s does it fall back to the first layout: the first primary, the others its replicas.
# Either way the Sentinels then correct any role that differs from theirs.
set -eu

master="${HELLO_REDIS_MASTER_NAME:?HELLO_REDIS_MASTER_NAME names the primary for the Sentinels}"
first="${HELLO_REDIS_FIRST_PRIMARY:?HELLO_REDIS_FIRST_PRIMARY names the first primary}"

named_primary() {
    for sentinel in ${HELLO_SENTINELS:?HELLO_SENTINELS lists the Sentinels}; do
        name=$(redis-cli -h "$sentinel" -p 26379 --raw sentinel get-master-addr-by-name "$master" 2>/dev/null | head -n 1) || true
        if [ -n "$name" ]; then
            echo "$name"
            return 0
        fi
    done
    return 1
}

case "${1:-}" in
    redis-server)
        me="${HELLO_REDIS_NAME:?HELLO_REDIS_NAME names this server}"
        primary=""
        for _ in 1 2 3 4 5; do
            if primary=$(named_primary); then break; fi
            sleep 2
        done
        primary="${primary:-$first}"
        shift
        if [ "$primary" = "$me" ]; then
            exec redis-server "$@" --replica-announce-ip "$me"
        fi
        exec redis-server "$@" --replica-announce-ip "$me" --replicaof "$primary" 6379
        ;;
    sentinel)
        me="${HELLO_SENTINEL_NAME:?HELLO_SENTINEL_NAME names this Sentinel}"
        # A Sentinel rewrites its file as it learns (the current primary, the other Sentinels):
        # it is written once, on the Sentinel's volume, and kept across restarts.
        if [ ! -f /data/sentinel.conf ]; then
            cat > /data/sentinel.conf <<CONF
port 26379
dir /data
protected-mode no
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $me
sentinel monitor $master $first 6379 ${HELLO_SENTINEL_QUORUM:?}
sentinel down-after-milliseconds $master ${HELLO_SENTINEL_DOWN_AFTER_MS:?}
sentinel failover-timeout $master 10000
sentinel parallel-syncs $master 1
CONF
        fi
        # Sentinel mode of redis-server: what Debian's redis-sentinel package runs, without the
        # package (any image with redis-server will do).
        exec redis-server /data/sentinel.conf --sentinel
        ;;
    *)
        echo "usage: redis-start.sh redis-server ARGS... | sentinel" >&2
        exit 64
        ;;
esac

#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on this machine, beside (and never touching) a broker that may
# already run here (`rabbit@localhost` on 5672):
#
#   deploy/cluster.sh start          start rabbit1..3@localhost and join them (idempotent)
#   deploy/cluster.sh stop           stop every node and remove the cluster's directory
#   deploy/cluster.sh discard        kill every node (no orderly stop, which takes a node
#                                    with hundreds of quorum queues a minute) and remove
#                                    the cluster's directory: for a cluster thrown away
#   deploy/cluster.sh status         the cluster status as node 1 sees it
#   deploy/cluster.sh urls           the AMQP URLs of the nodes, one a line
#   deploy/cluster.sh pid N          the process id of node N's Erlang VM (for `kill -9`)
#   deploy/cluster.sh start-node N   start node N again (after a kill): it rejoins
#
# Node N listens for AMQP on 127.0.0.1:$((PORT + N)) (5681-5683 by default) and for Erlang
# distribution on $((DIST + N)) (25681-25683); its data, logs, configuration and pid file
# live in $DIR/rabbitN (/tmp/dtasks-cluster by default). No plugin is enabled (no
# management listener). Quorum queue leaders are placed `balanced` over the nodes (not on
# the node of the declaring connection); the task queues of a DTask spread over several
# queues (`AmqpConfig::with_task_queues`) are placed by dtasks itself, one per node. When run as root, the nodes run as the `rabbitmq` user, with the
# file-descriptor limit RabbitMQ asks for, as `.ci/run` starts the local broker.
#
# Environment: DTASKS_CLUSTER_DIR, DTASKS_CLUSTER_PORT (AMQP port of node 0, default
# 5680), DTASKS_CLUSTER_DIST (distribution port of node 0, default 25680).
set -euo pipefail

DIR="${DTASKS_CLUSTER_DIR:-/tmp/dtasks-cluster}"
PORT="${DTASKS_CLUSTER_PORT:-5680}"
DIST="${DTASKS_CLUSTER_DIST:-25680}"
NODES=3
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
[ -x "$SERVER" ] || SERVER="$(command -v rabbitmq-server)"

node() { echo "rabbit$1@localhost"; }

ctl() {
  local n="$1"
  shift
  timeout 120 rabbitmqctl -q -n "$(node "$n")" "$@"
}

# The environment of node N: everything that would otherwise default to the system
# broker's files (its configuration sets 5672, its env file the node name).
node_env() {
  local n="$1" d="$DIR/rabbit$1"
  echo "HOME=/var/lib/rabbitmq" \
    "RABBITMQ_NODENAME=$(node "$n")" \
    "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1" \
    "RABBITMQ_NODE_PORT=$((PORT + n))" \
    "RABBITMQ_DIST_PORT=$((DIST + n))" \
    "RABBITMQ_MNESIA_BASE=$d/mnesia" \
    "RABBITMQ_LOG_BASE=$d/log" \
    "RABBITMQ_PID_FILE=$d/pid" \
    "RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins" \
    "RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf" \
    "RABBITMQ_ADVANCED_CONFIG_FILE=$d/advanced.config" \
    "RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf" \
    "ERL_EPMD_ADDRESS=127.0.0.1"
}

# Erlang distribution on the loopback interface only.
DIST_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"

running() { ctl "$1" status >/dev/null 2>&1; }

start_node() {
  local n="$1" d="$DIR/rabbit$1"
  if running "$n"; then
    return
  fi
  mkdir -p "$d/mnesia" "$d/log"
  cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$((PORT + n))
loopback_users.guest = true
queue_leader_locator = balanced
EOF
  echo '[].' >"$d/enabled_plugins"
  : >"$d/rabbitmq-env.conf"
  cp "$HERE/rabbitmq-advanced.config" "$d/advanced.config"
  # Started from its own directory: a node keeps the directory it was started in, and
  # cannot start Erlang helpers (its epmd monitor among them) once that one is gone.
  # shellcheck disable=SC2046
  if [ "$(id -u)" -eq 0 ] && id rabbitmq >/dev/null 2>&1; then
    chown -R rabbitmq:rabbitmq "$DIR"
    (cd "$d" && setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
      env $(node_env "$n") ERL_FLAGS="$DIST_FLAGS" \
      bash -c "ulimit -n $(ulimit -Hn); exec $SERVER -detached")
  else
    (cd "$d" && env $(node_env "$n") ERL_FLAGS="$DIST_FLAGS" \
      bash -c "ulimit -n $(ulimit -Hn); exec $SERVER -detached")
  fi
  wait_node "$n"
}

# Waits (up to 2 minutes) until node N answers and has booted.
wait_node() {
  local n="$1" i
  for i in $(seq 1 120); do
    if ctl "$n" await_startup >/dev/null 2>&1; then
      return
    fi
    sleep 1
  done
  echo "node $(node "$n") did not start; see $DIR/rabbit$n/log" >&2
  exit 1
}

pid_of() {
  local f="$DIR/rabbit$1/pid"
  if [ -s "$f" ]; then
    echo "$(cat "$f")"
  else
    ctl "$1" eval 'list_to_integer(os:getpid()).'
  fi
}

case "${1:-}" in
  start)
    mkdir -p "$DIR"
    # The nodes boot side by side (each waits for its own startup), then join node 1.
    pids=()
    for n in $(seq 1 $NODES); do
      start_node "$n" &
      pids+=("$!")
    done
    for p in "${pids[@]}"; do
      wait "$p"
    done
    for n in $(seq 2 $NODES); do
      if ! ctl 1 cluster_status --formatter json | grep -q "$(node "$n")"; then
        ctl "$n" stop_app
        ctl "$n" join_cluster "$(node 1)"
        ctl "$n" start_app
      fi
    done
    for n in $(seq 1 $NODES); do
      wait_node "$n"
    done
    echo "cluster up: $(for n in $(seq 1 $NODES); do printf '%s ' "$(node "$n"):$((PORT + n))"; done)"
    ;;
  start-node)
    start_node "${2:?node number}"
    ;;
  stop)
    for n in $(seq $NODES -1 1); do
      if running "$n"; then
        ctl "$n" stop >/dev/null 2>&1 || true
      fi
      f="$DIR/rabbit$n/pid"
      if [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
        kill -9 "$(cat "$f")" || true
      fi
    done
    rm -rf "$DIR"
    echo "cluster stopped"
    ;;
  discard)
    for n in $(seq 1 $NODES); do
      f="$DIR/rabbit$n/pid"
      if [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
        kill -9 "$(cat "$f")" || true
      fi
    done
    rm -rf "$DIR"
    echo "cluster discarded"
    ;;
  status)
    ctl 1 cluster_status
    ;;
  urls)
    for n in $(seq 1 $NODES); do
      echo "amqp://guest:guest@127.0.0.1:$((PORT + n))/%2f"
    done
    ;;
  pid)
    pid_of "${2:?node number}"
    ;;
  *)
    echo "usage: $0 start|stop|discard|status|urls|pid N|start-node N" >&2
    exit 2
    ;;
esac

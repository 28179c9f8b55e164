#!/usr/bin/env bash
# A Docker engine for the compose stack on a machine that has none running (make docker-engine, and
# make docker-engine-stop). As root on a Debian-like machine it installs what is missing from Debian's
# packages (docker.io; the compose v2 plugin from Debian trixie's docker-compose package when
# `docker compose version` fails), starts dockerd in the background with all its state under one folder
# and published ports bound to 127.0.0.1, and returns when the engine answers. Anywhere else it says what
# it would need and exits 0. `stop` stops that dockerd by its PID and undoes what it changed on the host.
set -euo pipefail

STATE_DIR="${DOCKER_ENGINE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/ingest-docker}"
PIDFILE="$STATE_DIR/dockerd.pid"
COMPOSE_DEB_URL="http://deb.debian.org/debian/pool/main/d/docker-compose/docker-compose_2.26.1-4_amd64.deb"
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

say() { echo "docker-engine: $*"; }

engine_answers() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

can_manage() {
  if [ "$(id -u)" != 0 ]; then say "not root: start a Docker engine yourself (or run this as root)"; return 1; fi
  if ! command -v apt-get >/dev/null; then say "no apt-get: install Docker and its compose plugin yourself"; return 1; fi
  return 0
}

install_missing() {
  local wanted=()
  command -v dockerd >/dev/null || wanted+=(docker.io containerd runc)
  command -v iptables >/dev/null || wanted+=(iptables)
  if [ ${#wanted[@]} -gt 0 ]; then
    say "installing ${wanted[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null
  fi
  if ! docker compose version >/dev/null 2>&1; then
    [ "$(dpkg --print-architecture)" = amd64 ] || { say "no compose v2 plugin and not amd64: install it yourself"; return 1; }
    say "installing the compose v2 plugin from Debian trixie's docker-compose package"
    local tmp; tmp="$(mktemp -d)"
    curl -fsSL -o "$tmp/dc.deb" "$COMPOSE_DEB_URL"
    dpkg-deb -x "$tmp/dc.deb" "$tmp/x"
    install -D -m0755 "$tmp/x/usr/libexec/docker/cli-plugins/docker-compose" "$PLUGIN_DIR/docker-compose"
    rm -rf "$tmp"
  fi
}

start() {
  if engine_answers; then say "a Docker engine already answers"; return 0; fi
  can_manage || return 0
  install_missing || return 0
  mkdir -p "$STATE_DIR"
  sysctl -n net.ipv4.ip_forward > "$STATE_DIR/ip_forward.before" 2>/dev/null || true
  iptables -S FORWARD 2>/dev/null | head -1 | awk '{print $3}' > "$STATE_DIR/forward_policy.before" || true
  say "starting dockerd (state in $STATE_DIR, published ports on 127.0.0.1)"
  nohup dockerd --data-root "$STATE_DIR/data" --exec-root "$STATE_DIR/exec" --pidfile "$PIDFILE" \
    -H unix:///var/run/docker.sock --ip 127.0.0.1 > "$STATE_DIR/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do
    if engine_answers; then say "the engine answers ($(docker version --format '{{.Server.Version}}'))"; return 0; fi
    sleep 0.5
  done
  say "dockerd did not answer within 30 s; see $STATE_DIR/dockerd.log"
  tail -20 "$STATE_DIR/dockerd.log" || true
  return 1
}

stop() {
  if [ ! -f "$PIDFILE" ]; then say "no dockerd started by this script ($PIDFILE missing)"; return 0; fi
  local pid; pid="$(cat "$PIDFILE")"
  say "stopping dockerd (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  # what dockerd changed on the host
  if [ -s "$STATE_DIR/ip_forward.before" ]; then sysctl -qw net.ipv4.ip_forward="$(cat "$STATE_DIR/ip_forward.before")" || true; fi
  if [ -s "$STATE_DIR/forward_policy.before" ]; then iptables -P FORWARD "$(cat "$STATE_DIR/forward_policy.before")" || true; fi
  for table_chain in "filter DOCKER-USER" "filter DOCKER-ISOLATION-STAGE-1" "filter DOCKER-ISOLATION-STAGE-2" \
    "filter DOCKER-FORWARD" "filter DOCKER-BRIDGE" "filter DOCKER-CT" "filter DOCKER" "nat DOCKER"; do
    set -- $table_chain
    while iptables -t "$1" -S 2>/dev/null | grep -q -- "-j $2\$"; do
      rule="$(iptables -t "$1" -S | grep -- "-j $2\$" | head -1 | sed 's/^-A /-D /')"
      eval iptables -t "$1" "$rule" || break
    done
    iptables -t "$1" -F "$2" 2>/dev/null || true
    iptables -t "$1" -X "$2" 2>/dev/null || true
  done
  for table in filter nat; do  # the rules left naming the bridge (FORWARD accepts, POSTROUTING masquerade)
    iptables -t "$table" -S 2>/dev/null | grep -- "docker0" | grep '^-A ' | sed 's/^-A /-D /' | while read -r rule; do
      eval iptables -t "$table" "$rule" || true
    done
  done
  ip link delete docker0 2>/dev/null || true
  say "stopped; ip_forward, the FORWARD policy, docker0 and the DOCKER chains are as before"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac

#!/bin/sh
# Make a Docker engine usable on a Debian machine (root): what tests/test_docker_cluster.py
# runs before it builds the cluster; usable by hand too.
#   - installs docker.io and docker-compose (v1) from Debian when `dockerd` is missing;
#   - starts dockerd in the background when no daemon answers (log: /var/log/mxfs-dockerd.log)
#     and prints `started PID` (whoever started it stops it: kill PID);
#   - prints `running` when a daemon already answered.
# Exit status 3 with the reason on stderr when the daemon does not come up (kernel, cgroups...).
set -eu
LOG=${MXFS_DOCKERD_LOG:-/var/log/mxfs-dockerd.log}
DOCKER=docker
[ -x /usr/bin/docker ] && DOCKER=/usr/bin/docker   # Debian's CLI, the daemon's own version

if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "ensure-docker: need root to apt-get install docker.io" >&2; exit 1; }
  echo "ensure-docker: installing docker.io docker-compose" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq docker.io docker-compose iptables >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq docker.io docker-compose iptables >/dev/null; }
  [ -x /usr/bin/docker ] && DOCKER=/usr/bin/docker
fi

if $DOCKER info >/dev/null 2>&1; then
  echo running
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "ensure-docker: no daemon answers and only root can start dockerd" >&2; exit 3; }
# a daemon we did not start may still be coming up (a service manager): give it a moment
if [ -S /var/run/docker.sock ] && pgrep -x dockerd >/dev/null 2>&1; then
  for _ in $(seq 1 20); do $DOCKER info >/dev/null 2>&1 && { echo running; exit 0; }; sleep 0.5; done
fi
mkdir -p "$(dirname "$LOG")"
setsid dockerd >"$LOG" 2>&1 </dev/null &
pid=$!
for _ in $(seq 1 120); do
  if $DOCKER info >/dev/null 2>&1; then
    echo "started $pid"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    break
  fi
  sleep 0.5
done
kill "$pid" 2>/dev/null || true
# another run may have started one at the same time (ours then exits: pid file taken)
if $DOCKER info >/dev/null 2>&1; then echo running; exit 0; fi
echo "ensure-docker: dockerd did not start; the end of $LOG:" >&2
grep -E 'level=(error|fatal)|failed|Error' "$LOG" | tail -n 5 >&2 || tail -n 5 "$LOG" >&2
exit 3

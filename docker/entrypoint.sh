#!/bin/sh
# Container roles (the image's ENTRYPOINT; compose runs it under an init, `init: true`):
#   server                 export /export on 0.0.0.0:$MXFS_PORT (mx) and $MXFS_PORT+1 (gm)
#   client [mx|gm]         `mxfs mount -f` of $MXFS_SERVER:$MXFS_PORT on $MXFS_MOUNT as the
#                          main process: its log goes to docker logs, SIGTERM (docker stop)
#                          unmounts cleanly, a server outage is ridden out by its reconnect
#   bench [SIZE_MB]        mount like a client, write a SIZE_MB file (default 256), drop it
#                          from this client's page cache, read it back: one line of MB/s
#   bench mxnet [ARGS]     python -m bench.transport ARGS (the transport micro-benchmark,
#                          from /opt/mxfs/tools)
#   health-server          healthcheck: the server listens (used by compose)
#   health-client          healthcheck: $MXFS_MOUNT is an mxfs mount (used by compose)
#   anything else          run as a command
# Environment: MXFS_SECRET_FILE (default /run/secrets/mxfs), MXFS_SERVER (server),
# MXFS_EXPORT_OPTIONS (the server's -o; default no_root_squash where it has squashing),
# MXFS_PORT (7070), MXFS_MOUNT (/mnt/mxfs), MXFS_TRANSPORT (mx), MXFS_OPTIONS (more -o
# options, e.g. timeout=5,debug), MXFS_WAIT (seconds to wait for the server at start, 120).
set -eu
SECRET=${MXFS_SECRET_FILE:-/run/secrets/mxfs}
SERVER=${MXFS_SERVER:-server}
PORT=${MXFS_PORT:-7070}
MNT=${MXFS_MOUNT:-/mnt/mxfs}
role=${1:-server}
[ $# -gt 0 ] && shift

say() { echo "mxfs-entrypoint: $*" >&2; }

# wait until HOST:PORT accepts a connection (the server may still be starting)
wait_for_server() {
  python3 - "$SERVER" "$PORT" "${MXFS_WAIT:-120}" <<'EOF'
import socket, sys, time
host, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end, said = time.monotonic() + limit, False
while True:
    try:
        socket.create_connection((host, port), timeout=2).close()
        sys.exit(0)
    except OSError as e:
        if time.monotonic() > end:
            sys.exit(f"mxfs-entrypoint: server {host}:{port} unreachable for {limit:.0f} s: {e}")
        if not said:
            print(f"mxfs-entrypoint: waiting for server {host}:{port} ({e})", file=sys.stderr)
            said = True
        time.sleep(0.5)
EOF
}

mount_options() {
  echo "transport=$1,secret_file=$SECRET,allow_other${MXFS_OPTIONS:+,$MXFS_OPTIONS}"
}

is_mounted() {
  awk -v m="$MNT" '$5 == m && / - fuse\.mxfs / { found = 1 } END { exit !found }' /proc/self/mountinfo
}

case "$role" in
  server)
    mkdir -p /export
    # export options (-o): MXFS_EXPORT_OPTIONS; unset: no_root_squash where the server knows
    # squashing (the clients' root is this cluster's own user, as a root-run compose file says)
    if [ -z "${MXFS_EXPORT_OPTIONS+set}" ]; then
      MXFS_EXPORT_OPTIONS=
      mxfs-server --help 2>/dev/null | grep -q no_root_squash && MXFS_EXPORT_OPTIONS=no_root_squash
    fi
    set -- ${MXFS_EXPORT_OPTIONS:+-o "$MXFS_EXPORT_OPTIONS"} "$@"
    exec mxfs-server /export --listen "0.0.0.0:$PORT" --secret-file "$SECRET" -v "$@"
    ;;
  client)
    transport=${1:-${MXFS_TRANSPORT:-mx}}
    mkdir -p "$MNT"
    wait_for_server
    say "mounting $SERVER:$PORT on $MNT with transport=$transport"
    exec mxfs mount -f "$SERVER:$PORT" "$MNT" -o "$(mount_options "$transport")"
    ;;
  bench)
    if [ "${1:-}" = mxnet ]; then
      shift
      export PYTHONPATH=/opt/mxfs/tools${PYTHONPATH:+:$PYTHONPATH}
      exec python3 -m bench.transport --out /tmp/mxnet-bench "$@"
    fi
    size=${1:-256}
    transport=${MXFS_TRANSPORT:-mx}
    mkdir -p "$MNT"
    wait_for_server
    mxfs mount "$SERVER:$PORT" "$MNT" -o "$(mount_options "$transport")"
    trap 'mxfs umount "$MNT" 2>/dev/null || true' EXIT
    f="$MNT/bench.$(hostname).$$"
    python3 - "$f" "$size" "$transport" <<'EOF'
import os, sys, time
path, size, transport = sys.argv[1], int(sys.argv[2]) << 20, sys.argv[3]
block = os.urandom(1 << 20)
t = time.perf_counter()
with open(path, "wb") as f:
    for _ in range(size >> 20):
        f.write(block)
    os.fsync(f.fileno())
w = time.perf_counter() - t
fd = os.open(path, os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # this client's cached copy
buf, n, t = bytearray(1 << 20), 0, time.perf_counter()
while (k := os.readv(fd, [buf])):
    n += k
r = time.perf_counter() - t
os.close(fd)
os.unlink(path)
mb = size / 1e6
ra = "?"
for line in open("/proc/self/mountinfo"):
    f = line.split()
    if f[4] == os.path.dirname(path):
        try:
            ra = open(f"/sys/class/bdi/{f[2]}/read_ahead_kb").read().strip()
        except OSError:
            pass
print(f"bench transport={transport} size={size >> 20} MiB: write+fsync {mb / w:.0f} MB/s, "
      f"read {mb / r:.0f} MB/s (read_ahead_kb {ra})")
EOF
    ;;
  health-server)
    # a listening socket on PORT, read from /proc (connecting would log a refused handshake)
    hex=$(printf ':%04X' "$PORT")
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p="$hex" \
      'substr($2, length($2) - 4) == p && $4 == "0A" { found = 1 } END { exit !found }'
    ;;
  health-client)
    is_mounted
    ;;
  *)
    exec "$role" "$@"
    ;;
esac

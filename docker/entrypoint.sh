#!/bin/sh
# Container roles:
#   server                      export /export on 0.0.0.0:7070 (mx) and :7071 (gm)
#   client [transport]          mount server:7070 on /mnt/mxfs (transport mx or gm), stay up
#   bench                       python -m mxnet.bench (transport micro-benchmark)
set -eu
SECRET=${MXFS_SECRET_FILE:-/run/secrets/mxfs}
role=${1:-server}
case "$role" in
  server)
    mkdir -p /export
    exec mxfs-server /export --listen 0.0.0.0:${MXFS_PORT:-7070} --secret-file "$SECRET" -v
    ;;
  client)
    transport=${2:-${MXFS_TRANSPORT:-mx}}
    mkdir -p /mnt/mxfs
    # the server may still be starting: retry the mount for a while
    for i in $(seq 1 30); do
      if mxfs mount "${MXFS_SERVER:-server}:${MXFS_PORT:-7070}" /mnt/mxfs \
           -o "transport=$transport,secret_file=$SECRET,allow_other"; then
        break
      fi
      sleep 1
    done
    mountpoint -q /mnt/mxfs || { echo "mxfs client: mount failed" >&2; exit 1; }
    echo "mxfs client: mounted ${MXFS_SERVER:-server} on /mnt/mxfs with transport=$transport"
    trap 'mxfs umount /mnt/mxfs; exit 0' TERM INT
    while mountpoint -q /mnt/mxfs; do sleep 2 & wait $!; done
    echo "mxfs client: mount went away" >&2
    exit 1
    ;;
  bench)
    shift
    exec python -m mxnet.bench "$@"
    ;;
  *)
    exec "$@"
    ;;
esac

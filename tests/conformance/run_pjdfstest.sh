#!/usr/bin/env bash
# Run the pjdfstest POSIX conformance suite on a fresh mxfs mount.
#
#   PJDFSTEST=/path/to/pjdfstest tests/conformance/run_pjdfstest.sh [mx|gm] [TEST...]
#
# PJDFSTEST is a built pjdfstest checkout: the directory holding the `pjdfstest` binary and
# tests/ (pjdfstest is not packaged; it is not part of this repository). TEST is a directory
# or .t file relative to $PJDFSTEST/tests (default: the Linux-relevant syscall directories).
# Needs root, /dev/fuse and fusermount3. Starts mxfs-server on a temporary export with
# -o no_root_squash (the suite acts as root and as uids 65533-65535), mounts it with
# allow_other (default_permissions is always on) and the given transport, runs `prove -r`
# from inside the mount, then always unmounts and stops the server. Exits with prove's status.
# Logs are kept in the printed work directory when prove fails (MXFS_PJD_KEEP=1: always).
set -u

transport=${1:-mx}
[ $# -gt 0 ] && shift
case "$transport" in
mx|gm) ;;
*) echo "usage: PJDFSTEST=DIR $0 [mx|gm] [TEST...]" >&2; exit 2 ;;
esac
if [ -z "${PJDFSTEST:-}" ] || [ ! -x "$PJDFSTEST/pjdfstest" ] || [ ! -d "$PJDFSTEST/tests" ]; then
	echo "PJDFSTEST must name a built pjdfstest checkout (with ./pjdfstest and tests/)" >&2
	exit 2
fi
if [ "$(id -u)" != 0 ]; then
	echo "run as root (the suite changes owners and acts as other uids)" >&2
	exit 2
fi
command -v prove >/dev/null || { echo "prove (perl) is missing" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${MXFS_BIN:-$ROOT/.venv/bin}
PJD=$(cd "$PJDFSTEST" && pwd)
if [ $# -gt 0 ]; then
	tests=("$@")
else
	tests=(chmod chown ftruncate link mkdir mkfifo mknod open posix_fallocate rename rmdir
	       symlink truncate unlink utimensat)
fi

work=$(mktemp -d /tmp/mxfs-pjdfstest.XXXXXX)
chmod 0755 "$work"   # uids other than root must reach the mount point
mkdir "$work/export" "$work/mnt"
head -c 32 /dev/urandom | base64 > "$work/secret"
server_pid=""
mount_pid=""
status=1

mounted() { grep -q " $work/mnt " /proc/self/mountinfo; }

cleanup() {
	trap - EXIT INT TERM
	cd /
	if mounted; then
		"$BIN/mxfs" umount "$work/mnt" >/dev/null 2>&1 || fusermount3 -u -z "$work/mnt" 2>/dev/null
	fi
	if [ -n "$mount_pid" ] && kill -0 "$mount_pid" 2>/dev/null; then
		kill "$mount_pid" 2>/dev/null; wait "$mount_pid" 2>/dev/null
	fi
	if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
		kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null
	fi
	if [ "$status" = 0 ] && [ "${MXFS_PJD_KEEP:-0}" != 1 ]; then
		rm -rf "$work"
	else
		echo "logs: $work/server.log $work/mount.log" >&2
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'status=130; exit' INT TERM

"$BIN/mxfs-server" "$work/export" --listen 127.0.0.1:0 --secret-file "$work/secret" \
	-o no_root_squash -v >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
port=""
for _ in $(seq 150); do
	port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\) (mx).*/\1/p' "$work/server.out")
	[ -n "$port" ] && break
	kill -0 "$server_pid" 2>/dev/null || break
	sleep 0.1
done
if [ -z "$port" ]; then
	echo "mxfs-server did not start:" >&2; tail -5 "$work/server.log" >&2
	exit
fi

MXFS_LOG_FILE="$work/mount.log" "$BIN/mxfs" mount "127.0.0.1:$port" "$work/mnt" \
	-o "transport=$transport,secret_file=$work/secret,allow_other" -f 2>>"$work/mount.log" &
mount_pid=$!
for _ in $(seq 200); do
	mounted && break
	kill -0 "$mount_pid" 2>/dev/null || break
	sleep 0.1
done
if ! mounted; then
	echo "mount failed:" >&2; tail -5 "$work/mount.log" >&2
	exit
fi

echo "pjdfstest on mxfs (transport=$transport) at $work/mnt: ${tests[*]}"
cd "$work/mnt" || exit
paths=()
for t in "${tests[@]}"; do paths+=("$PJD/tests/$t"); done
# PROVE_ARGS: extra prove options, e.g. PROVE_ARGS=-v
# shellcheck disable=SC2086
prove -r ${PROVE_ARGS:-} "${paths[@]}"
status=$?

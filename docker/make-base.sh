#!/bin/sh
# Build a Debian base image without a container registry:
#   debootstrap (minbase) from this machine's configured Debian mirror, then `docker import`.
#
#   docker/make-base.sh [IMAGE]          default IMAGE: mxfs-base:bookworm
#   docker build --build-arg BASE=mxfs-base:bookworm -f docker/Dockerfile -t mxfs:local .
#
# Does nothing when IMAGE already exists (remove it to rebuild). Needs root (debootstrap).
# MXFS_DEBIAN_MIRROR overrides the mirror, MXFS_DEBIAN_SUITE the suite (default bookworm).
# Certificates the host trusts locally (/usr/local/share/ca-certificates/*.crt, e.g. a proxy's)
# are trusted inside the base too, so that pip and apt in `docker build` work where the host's do.
set -eu
IMAGE=${1:-mxfs-base:bookworm}
SUITE=${MXFS_DEBIAN_SUITE:-bookworm}
DOCKER=${DOCKER:-docker}

if $DOCKER image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "make-base: $IMAGE exists"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "make-base: debootstrap needs root" >&2; exit 1; }

# the URIs of the host's apt sources, deb822 or one-line format (comments skipped)
host_uris() {
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    case "$f" in
      *.sources) awk 'tolower($1)=="uris:" {print $2}' "$f" ;;
      *) awk '$1=="deb" { o = 0; for (i = 2; i <= NF; i++) {
               if ($i ~ /^\[/) o = 1; if (!o) { print $i; break } if ($i ~ /\]$/) o = 0 } }' "$f" ;;
    esac
  done | grep -v '^cdrom:' | grep -i debian || true
}
MIRROR=${MXFS_DEBIAN_MIRROR:-$(host_uris | grep -v security | head -n 1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

if ! command -v debootstrap >/dev/null; then
  echo "make-base: installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
fi

ROOT=$(mktemp -d /var/tmp/mxfs-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT INT TERM
echo "make-base: debootstrap $SUITE from $MIRROR (a few minutes)"
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOT" "$MIRROR" \
  > "$ROOT.log" 2>&1 || { tail -n 20 "$ROOT.log" >&2; rm -f "$ROOT.log"; exit 1; }
rm -f "$ROOT.log"

# apt inside the image uses the same mirror (and its security suite when the host has one)
{
  echo "deb $MIRROR $SUITE main"
  echo "deb $MIRROR $SUITE-updates main"
  sec=$(host_uris | grep security | head -n 1)
  if [ -n "$sec" ] && [ -z "${MXFS_DEBIAN_MIRROR:-}" ]; then echo "deb $sec $SUITE-security main"; fi
} > "$ROOT/etc/apt/sources.list"

# no docs, no man pages, no apt caches in images (as the official Debian images do)
cat > "$ROOT/etc/dpkg/dpkg.cfg.d/docker-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
echo 'APT::Install-Recommends "false";' > "$ROOT/etc/apt/apt.conf.d/docker-norecommends"

if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  chroot "$ROOT" update-ca-certificates >/dev/null 2>&1 || true
fi
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/*.log \
  "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/usr/share/locale/*

tar --numeric-owner -C "$ROOT" -c . | $DOCKER import --change 'CMD ["bash"]' - "$IMAGE" >/dev/null
echo "make-base: built $IMAGE ($($DOCKER image inspect -f '{{.Size}}' "$IMAGE") bytes)"

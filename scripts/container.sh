#!/usr/bin/env bash
# Build and try the container image with Podman on a machine without a container registry
# (the recipe: a Debian bookworm base made by debootstrap, then `podman build` of the Dockerfile).
#
#   scripts/container.sh setup            # apt-get install podman buildah debootstrap runc (root)
#   scripts/container.sh base             # localhost/debian-bookworm-min (cached, reused)
#   scripts/container.sh build            # the image (IMAGE, default localhost/landslide-pipeline)
#   scripts/container.sh scan HOST_DIR [ARGS...]   # landslide scan inside, HOST_DIR mounted as the runs folder
#   scripts/container.sh app PORT         # the app, detached, on 127.0.0.1:PORT; prints the container id
#   scripts/container.sh all              # base + build
#   scripts/container.sh podman ARGS...   # podman with the same settings, e.g. podman rm -f ID
#
# Environment: IMAGE, BASE_IMAGE (localhost/debian-bookworm-min), CACHE_DIR (where the debootstrap
# rootfs tarball and containers.conf are kept: ~/.cache/landslide-pipeline/container), WHEELS_DIR (a
# local wheel folder bind-mounted into the build and used as pip --find-links: /opt/wheels when it
# exists), CA_BUNDLE (the CA bundle pip inside the build trusts: /etc/ssl/certs/ca-certificates.crt),
# TORCH_INDEX_URL (passed to the build; empty here, where torch comes from WHEELS_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/landslide-pipeline}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-bookworm-min}
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/landslide-pipeline/container}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
WHEELS_DIR=${WHEELS_DIR-/opt/wheels}
TORCH_INDEX_URL=${TORCH_INDEX_URL-}
mkdir -p "$CACHE_DIR"

# runc (crun refuses a mixed cgroup v1/v2 host), limits the host can grant, cgroupfs, file event log
if [ ! -f "$CACHE_DIR/containers.conf" ]; then
  printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n' \
    > "$CACHE_DIR/containers.conf"
fi
export CONTAINERS_CONF=${CONTAINERS_CONF:-$CACHE_DIR/containers.conf}

setup() {
  command -v podman >/dev/null && command -v debootstrap >/dev/null && command -v runc >/dev/null && return
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah debootstrap runc
}

base() {
  if podman image exists "$BASE_IMAGE"; then echo "base: $BASE_IMAGE exists"; return; fi
  local tarball=$CACHE_DIR/debian-bookworm-min.tar
  if [ ! -s "$tarball" ]; then
    local mirror rootfs=$CACHE_DIR/rootfs
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}"
    tar -C "$rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball" && rm -rf "$rootfs"
  fi
  podman import "$tarball" "$BASE_IMAGE"
}

build() {
  local args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
  if [ -f "$CA_BUNDLE" ]; then
    args+=(-v "$CA_BUNDLE:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
  fi
  if [ -n "$WHEELS_DIR" ] && [ -d "$WHEELS_DIR" ]; then
    args+=(-v "$WHEELS_DIR:/run/wheels:ro" --build-arg PIP_FIND_LINKS=/run/wheels)
  fi
  local previous
  previous=$(podman image inspect "$IMAGE" --format '{{.Id}}' 2>/dev/null || true)
  podman build --format docker "${args[@]}" -t "$IMAGE" .   # docker format keeps HEALTHCHECK
  podman image inspect "$IMAGE" --format 'image {{.Id}}: {{.Size}} bytes'
  # the image this build replaced holds its own copy of the venv (~2.4 GB): drop it unless in use
  if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect "$IMAGE" --format '{{.Id}}')" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
  fi
}

scan() {  # HOST_DIR [landslide scan arguments]: the run goes to HOST_DIR/x
  local host_dir=$1; shift
  mkdir -p "$host_dir" && chmod 0777 "$host_dir"   # the image's user (uid 1000) writes there
  podman run --rm --no-healthcheck -v "$(realpath "$host_dir"):/app/runs" "$IMAGE" \
    landslide scan --region iburi-2018 --out /app/runs/x "$@"
}

app() {  # PORT: the app detached on 127.0.0.1:PORT
  podman run -d --rm -p "127.0.0.1:$1:8501" "$IMAGE"
}

cmd=${1:-all}; shift || true
case $cmd in
  setup) setup ;;
  base) base ;;
  build) build ;;
  scan) scan "$@" ;;
  app) app "$@" ;;
  all) base && build ;;
  podman) podman "$@" ;;
  *) echo "usage: $0 setup|base|build|scan HOST_DIR [ARGS]|app PORT|all|podman ARGS" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Build genlab's deployable image: bash scripts/containerize.sh [cpu|gpu]   (default: cpu)
#
#   cpu   onnxruntime; no CUDA libraries                                        -> genlab:cpu
#   gpu   onnxruntime-gpu with the CUDA and cuDNN wheels (the host needs only    -> genlab:gpu
#         the NVIDIA driver); on a host without a GPU it runs on the CPU
#
# It builds the bento from bentofile.yaml (the models it names must be in BentoML's model store: `genlab export`
# puts them there) and the image with docker where a daemon answers, else podman (installed with apt-get when missing
# and run as root), tagged in that engine's own image store. The base image: GENLAB_BASE_IMAGE when set, else
# python:3.11-slim where Docker Hub answers, else a Debian + Python image made here with debootstrap from the apt
# mirror this machine is configured with. The build reads PyPI through this machine's CA bundle (mounted for that one
# step, never stored in the image).
#
# Environment: GENLAB_IMAGE (the tag, default genlab:FLAVOUR), GENLAB_ENGINE (docker or podman), GENLAB_BASE_IMAGE,
# GENLAB_DEBIAN_MIRROR (default: read from /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list),
# BENTOML_HOME (the model store), CA_BUNDLE (default: SSL_CERT_FILE, else /etc/ssl/certs/ca-certificates.crt).
set -euo pipefail
cd "$(dirname "$0")/.."

flavour=${1:-cpu}
case "$flavour" in
  cpu | gpu) ;;
  *) echo "usage: bash scripts/containerize.sh [cpu|gpu]" >&2; exit 2 ;;
esac
image=${GENLAB_IMAGE:-genlab:$flavour}
python=$(realpath -s "${PYTHON:-.venv/bin/python}")
suite=bookworm            # Debian 12: Python 3.11, the bento's python_version
local_base=localhost/genlab-base:$suite
hub_base=docker.io/library/python:3.11-slim
ca_bundle=${CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
podman_conf=$PWD/deploy/podman-containers.conf

say() { echo "containerize: $*" >&2; }
fail() { echo "containerize: $*" >&2; exit 2; }

# -- the engine ------------------------------------------------------------------------------------------------------
install_podman() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || fail "no container engine: install docker or podman"
  say "installing podman with apt-get"
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends podman runc debootstrap >&2
}

pick_engine() {
  if [ -n "${GENLAB_ENGINE:-}" ]; then echo "$GENLAB_ENGINE"; return; fi
  if command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1; then echo docker; return; fi
  command -v podman >/dev/null || install_podman
  echo podman
}

image_exists() { "$engine" image inspect "$1" >/dev/null 2>&1; }

# podman without systemd, on hybrid cgroups or without CAP_SYS_RESOURCE needs deploy/podman-containers.conf
podman_settings() {
  [ "$engine" = podman ] && [ -z "${CONTAINERS_CONF:-}" ] || return 0
  if ! podman run --rm --network host "$1" python3 -c pass >/dev/null 2>&1; then
    export CONTAINERS_CONF=$podman_conf
    podman run --rm --network host "$1" python3 -c pass >/dev/null || fail "podman cannot run a container here"
    say "podman runs with CONTAINERS_CONF=$podman_conf"
  fi
}

# -- the base image --------------------------------------------------------------------------------------------------
debian_mirror() {
  if [ -n "${GENLAB_DEBIAN_MIRROR:-}" ]; then echo "$GENLAB_DEBIAN_MIRROR"; return; fi
  local mirror=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    # deb822 stanzas: the URIs of the first whose Suites name $suite
    mirror=$(awk -v suite="$suite" 'BEGIN { RS = "" } {
        uri = ""; found = 0; n = split($0, lines, "\n")
        for (i = 1; i <= n; i++) {
          if (lines[i] ~ /^URIs:/) { split(lines[i], f, " "); uri = f[2] }
          if (lines[i] ~ /^Suites:/) { m = split(lines[i], s, " "); for (j = 2; j <= m; j++) if (s[j] == suite) found = 1 }
        }
        if (found && uri != "") { print uri; exit }
      }' /etc/apt/sources.list.d/*.sources)
  fi
  if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
    mirror=$(sed -E 's/\[[^]]*\] //' /etc/apt/sources.list | awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2; exit }')
  fi
  [ -n "$mirror" ] || fail "no Debian mirror for $suite in /etc/apt: set GENLAB_DEBIAN_MIRROR or GENLAB_BASE_IMAGE"
  echo "$mirror"
}

build_local_base() {
  [ "$(id -u)" = 0 ] || fail "debootstrap needs root: run as root, or set GENLAB_BASE_IMAGE to a Debian + Python 3.11 image"
  command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2
  local mirror rootfs
  mirror=$(debian_mirror)
  rootfs=$(mktemp -d "$work/rootfs.XXXXXX")
  say "building $local_base: Debian $suite + Python from $mirror (debootstrap, about 2 minutes)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$suite" "$rootfs" "$mirror" >&2
  # what a server image does not need: package caches and lists, docs, man pages, translations; the host's resolver
  rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/{doc,man,info,locale}/* \
    "$rootfs"/var/log/* "$rootfs"/etc/resolv.conf "$rootfs"/etc/hostname
  tar -C "$rootfs" -c . | "$engine" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$local_base" >&2
  rm -rf "$rootfs"
}

pick_base() {
  if [ -n "${GENLAB_BASE_IMAGE:-}" ]; then echo "$GENLAB_BASE_IMAGE"; return; fi
  if image_exists "$hub_base" || timeout 60 "$engine" pull -q "$hub_base" >/dev/null 2>&1; then echo "$hub_base"; return; fi
  image_exists "$local_base" || build_local_base
  echo "$local_base"
}

# -- the bento and the image -----------------------------------------------------------------------------------------
# `history` lines (size TAB command; the size in bytes or as "264 MB", "1.1kB") -> the largest layers, in MB
layer_sizes() {
  "$python" -c '
import re, sys
units = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9}
rows = []
for line in sys.stdin:
    size, _, command = line.rstrip("\n").partition("\t")
    number, unit = re.fullmatch(r"([\d.]+)\s*([A-Za-z]*)", size.strip()).groups()
    rows.append((float(number) * units[unit.lower()], " ".join(command.split())))
for size, command in sorted(rows, reverse=True)[:6]:
    print(f"  {size / 1e6:8.1f} MB  {command[:110]}")
'
}

report() {
  local bytes run
  bytes=$("$engine" image inspect --format '{{.Size}}' "$image")
  say "layers of $image (largest first):"
  "$engine" history --human=false --no-trunc --format '{{.Size}}\t{{.CreatedBy}}' "$image" | layer_sizes >&2
  run="$engine run --rm -p 3000:3000"
  [ "$flavour" = gpu ] && { [ "$engine" = docker ] && run+=" --gpus all" || run+=" --device nvidia.com/gpu=all"; }
  [ "${CONTAINERS_CONF:-}" = "$podman_conf" ] && run="CONTAINERS_CONF=$podman_conf $run"
  echo "$image: $((bytes / 1000000)) MB ($engine)"
  echo "run: $run $image        (options after the image go to bentoml serve: --port 8080, --host ...)"
}

work=$(mktemp -d /var/tmp/genlab-containerize.XXXXXX) # the rootfs of a base image goes here too: not a tmpfs
trap 'rm -rf "$work"' EXIT
engine=$(pick_engine)
[ -s "$ca_bundle" ] || fail "no CA bundle at $ca_bundle: set CA_BUNDLE"
base=$(pick_base)
podman_settings "$base"
"$python" deploy/flavour.py "$flavour" "$base" "$work/bentofile.yaml"
say "building the $flavour bento (base image $base)"
bento=$("$python" -m bentoml build -f "$work/bentofile.yaml" --output tag . | sed -n 's/^__tag__://p')
[ -n "$bento" ] || fail "bentoml build gave no tag"
options=(--opt network=host --opt "secret=id=ca-bundle,src=$ca_bundle")
[ "$engine" = podman ] && options+=(--opt format=docker) # HEALTHCHECK is kept in the docker format only
say "building $image from $bento with $engine"
# BentoML refuses a dockerfile_template outside the working directory, and it puts the bento's copy in a temporary
# directory: containerize from inside the folder that directory is made in.
(cd "$work" && TMPDIR=$work "$python" -m bentoml containerize "$bento" --backend "$engine" -t "$image" "${options[@]}") >&2
report

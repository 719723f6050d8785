#!/usr/bin/env bash
# STAND-INS FOR LOCAL TESTS ONLY. Builds, with the docker CLI of the caller's DOCKER_HOST:
#   carve-dev/minbase:bookworm        debootstrap --variant=minbase bookworm, imported
#   carve-dev/python:3.11-bookworm    + python3.11, venv, the host's CA bundle and pip settings
#   carve-dev/{nginx,redis,rabbitmq,openbao,mongo}:standin   the backends compose.yaml needs
# Each step is skipped when its image is there (the minbase) or cached (docker's layer cache).
# Needs root, debootstrap and network access to the Debian archive and PyPI (nothing else).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log() { echo "dev-images: $*" >&2; }

# The Debian mirror this machine's apt uses (deb822 or one-line format), else deb.debian.org.
mirror() {
    local uri
    uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1)
    [ -n "$uri" ] || uri=$(grep -hsE '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -1)
    echo "${uri:-http://deb.debian.org/debian}"
}

stage=$(mktemp -d /tmp/carve-dev-images.XXXXXX)
trap 'rm -rf "$stage"' EXIT

if ! docker image inspect carve-dev/minbase:bookworm >/dev/null 2>&1; then
    log "debootstrap --variant=minbase bookworm from $(mirror) (once per machine)"
    debootstrap --variant=minbase bookworm "$stage/root" "$(mirror)" >"$stage/debootstrap.log" 2>&1 \
        || { tail -20 "$stage/debootstrap.log" >&2; exit 1; }
    # The host's apt sources (same mirror, with updates and security) when they are deb822.
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        cp /etc/apt/sources.list.d/debian.sources "$stage/root/etc/apt/sources.list.d/"
        rm -f "$stage/root/etc/apt/sources.list"
    fi
    rm -rf "$stage/root/var/cache/apt/archives/"*.deb "$stage/root/var/lib/apt/lists/"*
    # The host's PIP_* settings, except local paths the image does not have.
    changes=()
    while IFS='=' read -r name value; do
        case "$value" in /opt/* | file:*) continue ;; esac
        changes+=(--change "ENV $name=$value")
    done < <(env | grep -E '^PIP_[A-Z_]+=' | sort)
    tar -C "$stage/root" -c . | docker import "${changes[@]}" --change 'CMD ["bash"]' \
        - carve-dev/minbase:bookworm >/dev/null
    rm -rf "$stage/root"
fi

# The build context: this folder, and the host's CA bundle and pip configuration.
cp -r "$here"/. "$stage/ctx"
mkdir -p "$stage/ctx/host/etc/ssl/certs" "$stage/ctx/host/etc/xdg"
cp /etc/ssl/certs/ca-certificates.crt "$stage/ctx/host/etc/ssl/certs/"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$stage/ctx/host/etc/"
[ -d /etc/xdg/pip ] && cp -r /etc/xdg/pip "$stage/ctx/host/etc/xdg/"

build() {  # TARGET TAG
    log "building $2"
    DOCKER_BUILDKIT=0 docker build -q --network host --target "$1" -t "$2" "$stage/ctx" >/dev/null
}
build python carve-dev/python:3.11-bookworm
for target in nginx redis rabbitmq openbao mongo; do
    build "$target" "carve-dev/$target:standin"
done

#!/usr/bin/env bash
# Development PKI for the compose stack and the NGINX tests: a CA standing in for the
# organisation's device CA, a server certificate for NGINX and one osquery device (client)
# certificate, all signed by that CA. For test beds only: production uses the organisation's
# own CA and device certificates.
#
#   deploy/pki/make-dev-pki.sh [OUTDIR] [SERVER_NAME]
#
#   OUTDIR       where the files go (default: deploy/compose/pki, which deploy/compose/.gitignore
#                keeps out of git); it is created with mode 0700
#   SERVER_NAME  extra name in the server certificate besides localhost and 127.0.0.1, the
#                name osquery uses in --tls_hostname (default: $CARVE_SERVER_NAME, else
#                carves.example.org); an IPv4 address becomes an IP SAN
#   DEVICE_NAME  (environment) common name of the device certificate (default: osquery-device)
#
# Writes ca.pem ca.key server.pem server.key device.pem device.key (keys 0600). An existing
# ca.key is reused, so running it again with another DEVICE_NAME after moving device.* away
# issues one more device from the same CA; existing files are never overwritten.
#
# Keys never go into git: inside a git work tree the script refuses an OUTDIR that git would
# not ignore.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../compose/pki}
server_name=${2:-${CARVE_SERVER_NAME:-carves.example.org}}
device_name=${DEVICE_NAME:-osquery-device}
ca_days=${CA_DAYS:-3650}
leaf_days=${LEAF_DAYS:-397}  # browsers and Apple clients refuse longer-lived server certificates

die() {
    echo "make-dev-pki: $*" >&2
    exit 1
}

command -v openssl >/dev/null 2>&1 || die "openssl is not installed"
case "$server_name" in
    '' | *[!A-Za-z0-9.:-]*) die "SERVER_NAME must be a DNS name or an IP address, got '$server_name'" ;;
esac
case "$device_name" in
    '' | *[!A-Za-z0-9._-]*) die "DEVICE_NAME may hold letters, digits, '.', '_' and '-' only" ;;
esac

case "$out" in
    /*) ;;
    *) out=$PWD/$out ;;
esac

# Never leave a private key where `git add` would pick it up (checked before anything is made).
probe=$out
while [ ! -d "$probe" ]; do probe=$(dirname "$probe"); done
if command -v git >/dev/null 2>&1 && git -C "$probe" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    if ! git -C "$probe" check-ignore -q "$out/ca.key"; then
        die "$out is inside a git work tree and not ignored: choose a directory outside the" \
            "repository or one that .gitignore covers (deploy/compose/pki is)"
    fi
fi

mkdir -p "$out"
chmod 0700 "$out"
out=$(cd "$out" && pwd)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077

new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

serial() {
    echo "0x$(openssl rand -hex 16)"
}

# sign NAME SUBJECT EXTENSIONS: NAME.key (made if missing) -> NAME.pem, signed by the CA.
sign() {
    local name=$1 subject=$2 extensions=$3
    [ -f "$out/$name.key" ] || new_key "$out/$name.key"
    openssl req -new -key "$out/$name.key" -subj "$subject" -out "$work/$name.csr"
    printf '%s\n' "$extensions" >"$work/$name.ext"
    openssl x509 -req -in "$work/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
        -set_serial "$(serial)" -days "$leaf_days" -sha256 \
        -extfile "$work/$name.ext" -out "$out/$name.pem" 2>/dev/null
}

if [ ! -f "$out/ca.key" ]; then
    new_key "$out/ca.key"
    cat >"$work/ca.cnf" <<'EOF2'
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF2
    # A unique name per CA: two development CAs never look like the same issuer.
    openssl req -new -x509 -config "$work/ca.cnf" -extensions ca -key "$out/ca.key" -sha256 \
        -days "$ca_days" -set_serial "$(serial)" \
        -subj "/O=osquery carve server (development)/CN=Development device CA $(openssl rand -hex 4)" \
        -out "$out/ca.pem"
elif [ ! -f "$out/ca.pem" ]; then
    die "$out/ca.key exists without ca.pem"
fi

case "$server_name" in
    *[!0-9.]*) extra_san="DNS:$server_name" ;;
    *) extra_san="IP:$server_name" ;;
esac

if [ ! -f "$out/server.pem" ]; then
    sign server "/O=osquery carve server (development)/CN=$server_name" "\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, $extra_san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer"
fi

if [ ! -f "$out/device.pem" ]; then
    sign device "/O=osquery carve server (development)/CN=$device_name" "\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer"
fi

chmod 0600 "$out"/*.key
chmod 0644 "$out"/*.pem
openssl verify -CAfile "$out/ca.pem" "$out/server.pem" "$out/device.pem" >/dev/null ||
    die "the certificates do not verify against the CA"
names() {
    openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null | tail -n +2 | tr -d ' '
}
echo "make-dev-pki: $out: ca.pem, server.pem ($(names "$out/server.pem")), device.pem" \
    "($(openssl x509 -in "$out/device.pem" -noout -subject -nameopt multiline | sed -n 's/ *commonName *= //p'))"

#!/usr/bin/env bash
# Development PKI for the compose stack and the NGINX tests: a CA standing in for the
# organisation's device CA, its certificate revocation list, a server certificate for NGINX
# and osquery device (client) certificates, all signed by that CA. For test beds only:
# production uses the organisation's own CA, CRL and device certificates.
#
#   deploy/pki/make-dev-pki.sh [OUTDIR] [SERVER_NAME]   the CA, ca.crl, server and first device
#   deploy/pki/make-dev-pki.sh device NAME [OUTDIR]     one more device: devices/NAME.pem, .key
#   deploy/pki/make-dev-pki.sh revoke NAME [OUTDIR]     revoke the device NAME, write a new ca.crl
#   deploy/pki/make-dev-pki.sh crl [OUTDIR]             write a fresh ca.crl (before it expires)
#
#   OUTDIR       where the files go (default: deploy/compose/pki, which deploy/compose/.gitignore
#                keeps out of git); it is created with mode 0700
#   SERVER_NAME  extra name in the server certificate besides localhost and 127.0.0.1, the
#                name osquery uses in --tls_hostname (default: $CARVE_SERVER_NAME, else
#                carves.example.org); an IPv4 address becomes an IP SAN
#   NAME         a device certificate's common name: letters, digits, '.', '_' and '-'
#   DEVICE_NAME  (environment) common name of the first device certificate (default: osquery-device)
#   CRL_DAYS     (environment) how long a CRL is valid (default: 365). NGINX refuses EVERY device
#                once ca.crl is past its next-update time: run `crl` again before then.
#   REVOKE_REASON (environment) reason written into the CRL (default: keyCompromise)
#
# The first form writes ca.pem ca.key ca.crl server.pem server.key device.pem device.key
# (keys 0600) and the CA database in ca-db/ (index.txt: every certificate issued, with its
# serial and status; ca-db/certs/: a copy of each). An existing ca.key is reused and existing
# files are never overwritten, so running it again with another DEVICE_NAME after moving
# device.* away also issues one more device. A PKI made before the CA database existed is
# adopted: its server and device certificates are entered into ca-db/ so they can be revoked.
#
# Revoking a lost device (deploy/compose/README.md, "Revoking a device"):
#   make-dev-pki.sh revoke NAME ./pki                 # every valid certificate with CN NAME
#   docker compose exec nginx nginx -s reload         # NGINX reads ca.crl only when it (re)loads
#
# Keys never go into git: inside a git work tree the script refuses an OUTDIR that git would
# not ignore.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
default_out=$here/../compose/pki
command=init
name=
case "${1:-}" in
    device | revoke)
        command=$1
        name=${2:-}
        out=${3:-$default_out}
        ;;
    crl)
        command=crl
        out=${2:-$default_out}
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        out=${1:-$default_out}
        ;;
esac
server_name=${2:-${CARVE_SERVER_NAME:-carves.example.org}}
device_name=${DEVICE_NAME:-osquery-device}
ca_days=${CA_DAYS:-3650}
leaf_days=${LEAF_DAYS:-397}  # browsers and Apple clients refuse longer-lived server certificates
crl_days=${CRL_DAYS:-365}
revoke_reason=${REVOKE_REASON:-keyCompromise}

die() {
    echo "make-dev-pki: $*" >&2
    exit 1
}

valid_name() {
    case "$1" in
        '' | *[!A-Za-z0-9._-]*) return 1 ;;
    esac
}

command -v openssl >/dev/null 2>&1 || die "openssl is not installed"
case "$command" in
    init)
        case "$server_name" in
            '' | *[!A-Za-z0-9.:-]*)
                die "SERVER_NAME must be a DNS name or an IP address, got '$server_name'"
                ;;
        esac
        valid_name "$device_name" || die "DEVICE_NAME may hold letters, digits, '.', '_' and '-' only"
        ;;
    device | revoke)
        valid_name "$name" || die "usage: make-dev-pki.sh $command NAME [OUTDIR]; NAME may hold" \
            "letters, digits, '.', '_' and '-' only"
        ;;
esac
case "$crl_days" in
    '' | 0* | *[!0-9]*) die "CRL_DAYS must be a positive number of days, got '$crl_days'" ;;
esac
case "$revoke_reason" in
    unspecified | keyCompromise | affiliationChanged | superseded | cessationOfOperation) ;;
    *) die "REVOKE_REASON: unspecified, keyCompromise, affiliationChanged, superseded or" \
        "cessationOfOperation, got '$revoke_reason'" ;;
esac

case "$out" in
    /*) ;;
    *) out=$PWD/$out ;;
esac

if [ "$command" = init ]; then
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
elif [ ! -f "$out/ca.key" ] || [ ! -f "$out/ca.pem" ]; then
    die "$out holds no CA (ca.pem, ca.key): run make-dev-pki.sh $out first"
fi
out=$(cd "$out" && pwd)
db=$out/ca-db

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077

new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

serial() {
    echo "0x$(openssl rand -hex 16)"
}

common_name() {
    openssl x509 -in "$1" -noout -subject -nameopt multiline | sed -n 's/^ *commonName *= //p'
}

# The CA's openssl configuration, written afresh for each run (absolute paths of this OUTDIR).
cat >"$work/ca.cnf" <<EOF2
[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[dev_ca]
database = $db/index.txt
new_certs_dir = $db/certs
certificate = $out/ca.pem
private_key = $out/ca.key
crlnumber = $db/crlnumber
rand_serial = yes
default_md = sha256
default_days = $leaf_days
default_crl_days = $crl_days
policy = policy_any
unique_subject = no
email_in_dn = no
copy_extensions = none
preserve = yes
crl_extensions = crl_ext
[policy_any]
organizationName = optional
commonName = supplied
[crl_ext]
authorityKeyIdentifier = keyid:always
EOF2

ca() {
    openssl ca -config "$work/ca.cnf" -name dev_ca -batch "$@"
}

# The CRL, replaced atomically: a reloading NGINX never reads half a file.
write_crl() {
    ca -gencrl -crldays "$crl_days" -out "$work/ca.crl" 2>/dev/null
    chmod 0644 "$work/ca.crl"
    mv "$work/ca.crl" "$out/ca.crl"
}

# The CA database; certificates issued before it existed are entered as valid.
init_db() {
    [ -f "$db/index.txt" ] && return 0
    mkdir -p "$db/certs"
    chmod 0700 "$db"
    : >"$db/index.txt"
    echo 1000 >"$db/crlnumber"
    local cert
    for cert in "$out"/server.pem "$out"/device.pem "$out"/devices/*.pem; do
        [ -f "$cert" ] || continue
        ca -valid "$cert" 2>/dev/null
        cp "$cert" "$db/certs/adopted-$(openssl x509 -in "$cert" -noout -serial | cut -d= -f2).pem"
    done
}

# sign FILE SUBJECT EXTENSIONS: FILE.key (made if missing) -> FILE.pem, signed by the CA and
# entered into its database.
sign() {
    local file=$1 subject=$2 extensions=$3
    [ -f "$file.key" ] || new_key "$file.key"
    openssl req -new -key "$file.key" -subj "$subject" -out "$work/leaf.csr"
    printf '%s\n' "$extensions" >"$work/leaf.ext"
    ca -in "$work/leaf.csr" -days "$leaf_days" -notext -extfile "$work/leaf.ext" \
        -out "$file.pem" 2>/dev/null
    chmod 0600 "$file.key"
    chmod 0644 "$file.pem"
}

device_extensions="\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer"

case "$command" in
    device)
        init_db
        mkdir -p "$out/devices"
        [ ! -e "$out/devices/$name.pem" ] || die "$out/devices/$name.pem exists"
        sign "$out/devices/$name" "/O=osquery carve server (development)/CN=$name" "$device_extensions"
        openssl verify -CAfile "$out/ca.pem" "$out/devices/$name.pem" >/dev/null ||
            die "the certificate does not verify against the CA"
        echo "make-dev-pki: $out/devices/$name.pem, $name.key: device '$name'"
        exit 0
        ;;
    revoke)
        init_db
        revoked=0
        for cert in "$db"/certs/*.pem; do
            [ -f "$cert" ] || continue
            [ "$(common_name "$cert")" = "$name" ] || continue
            serial=$(openssl x509 -in "$cert" -noout -serial | cut -d= -f2)
            status=$(awk -F '\t' -v s="$serial" '$4 == s { print $1 }' "$db/index.txt")
            [ "$status" = V ] || continue
            ca -revoke "$cert" -crl_reason "$revoke_reason" 2>/dev/null
            echo "make-dev-pki: revoked '$name', serial $serial ($revoke_reason)"
            revoked=$((revoked + 1))
        done
        [ "$revoked" -gt 0 ] || die "no valid certificate with the common name '$name' in $db"
        write_crl
        echo "make-dev-pki: $out/ca.crl updated; reload NGINX (nginx -s reload) to apply it"
        exit 0
        ;;
    crl)
        init_db
        write_crl
        echo "make-dev-pki: $out/ca.crl valid for $crl_days days"
        exit 0
        ;;
esac

if [ ! -f "$out/ca.key" ]; then
    new_key "$out/ca.key"
    # A unique name per CA: two development CAs never look like the same issuer.
    openssl req -new -x509 -config "$work/ca.cnf" -extensions ca_ext -key "$out/ca.key" -sha256 \
        -days "$ca_days" -set_serial "$(serial)" \
        -subj "/O=osquery carve server (development)/CN=Development device CA $(openssl rand -hex 4)" \
        -out "$out/ca.pem"
elif [ ! -f "$out/ca.pem" ]; then
    die "$out/ca.key exists without ca.pem"
fi
init_db

case "$server_name" in
    *[!0-9.]*) extra_san="DNS:$server_name" ;;
    *) extra_san="IP:$server_name" ;;
esac

if [ ! -f "$out/server.pem" ]; then
    sign "$out/server" "/O=osquery carve server (development)/CN=$server_name" "\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, $extra_san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer"
fi

if [ ! -f "$out/device.pem" ]; then
    sign "$out/device" "/O=osquery carve server (development)/CN=$device_name" "$device_extensions"
fi

# Always present, so NGINX's ssl_crl is valid with or without revocations.
[ -f "$out/ca.crl" ] || write_crl

chmod 0600 "$out"/*.key
chmod 0644 "$out"/*.pem "$out/ca.crl"
openssl verify -CAfile "$out/ca.pem" -CRLfile "$out/ca.crl" -crl_check \
    "$out/server.pem" "$out/device.pem" >/dev/null ||
    die "the certificates do not verify against the CA and its CRL"
names() {
    openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null | tail -n +2 | tr -d ' '
}
echo "make-dev-pki: $out: ca.pem, ca.crl, server.pem ($(names "$out/server.pem")), device.pem" \
    "($(common_name "$out/device.pem"))"

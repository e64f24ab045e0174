#!/bin/sh
# Make a test CA and x509 host certificates for live migration between vmsup hosts.
#   tests/migcerts.sh OUTDIR NAME:IP [NAME:IP ...]
# writes OUTDIR/ca-cert.pem, OUTDIR/ca-key.pem and, per host, OUTDIR/NAME/ with the files
# of the supervisors' channel, vmsup's [migration] tls_dir: ca-cert.pem, server-cert.pem,
# server-key.pem, client-cert.pem, client-key.pem (directory 0700, keys 0600: root's
# alone). OUTDIR/qemu-ca/: QEMU's own CA, and per host OUTDIR/qemu-ca/NAME/ with the same
# names and dh-params.pem, for [migration] qemu_tls_dir, QEMU's tls-creds-x509 (directory
# 0750, keys 0640: a deployment gives them to QEMU's group). Two CAs, so that QEMU's
# credentials do not authenticate a vmsup host. Each certificate names the host by DNS
# name and IP address. Also OUTDIR/rogue-ca/: a third CA with a host "rogue" of its own,
# for tests that a foreign CA is refused.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 OUTDIR NAME:IP [NAME:IP ...]" >&2; exit 64; }
command -v certtool >/dev/null || { echo "$0: certtool is missing (Debian package gnutls-bin)" >&2; exit 69; }
out=$1; shift
mkdir -p "$out"
umask 077

mkca() { # dir cn
  certtool --generate-privkey --key-type=ecdsa --curve=secp256r1 --outfile "$1/ca-key.pem" 2>/dev/null
  cat > "$1/ca.info" <<EOT
cn = $2
ca
cert_signing_key
expiration_days = 30
EOT
  certtool --generate-self-signed --load-privkey "$1/ca-key.pem" --template "$1/ca.info" \
    --outfile "$1/ca-cert.pem" 2>/dev/null
}

mkhost() { # cadir name ip [qemu]
  d="$1/$2"
  mkdir -p "$d"
  cp "$1/ca-cert.pem" "$d/ca-cert.pem"
  for role in server client; do
    certtool --generate-privkey --key-type=ecdsa --curve=secp256r1 --outfile "$d/$role-key.pem" 2>/dev/null
    cat > "$d/$role.info" <<EOT
organization = vmsup test
cn = $2
dns_name = $2
ip_address = $3
tls_www_server
tls_www_client
signing_key
expiration_days = 30
EOT
    certtool --generate-certificate --load-privkey "$d/$role-key.pem" --load-ca-certificate "$1/ca-cert.pem" \
      --load-ca-privkey "$1/ca-key.pem" --template "$d/$role.info" --outfile "$d/$role-cert.pem" 2>/dev/null
    rm -f "$d/$role.info"
  done
  chmod 0644 "$d"/*-cert.pem
  [ "${4:-}" = qemu ] || return 0
  # Without dh-params.pem QEMU generates DH parameters each time it loads the server
  # credentials (about 0.1 s, on the destination's critical path); the RFC 7919 group
  # that gnutls ships will do.
  certtool --get-dh-params --sec-param medium --outfile "$d/dh-params.pem" 2>/dev/null
  chmod 0644 "$d/dh-params.pem"
  chmod 0640 "$d"/*-key.pem
  chmod 0750 "$d"
}

mkca "$out" "vmsup test migration CA"
mkdir -p "$out/qemu-ca"
mkca "$out/qemu-ca" "vmsup test QEMU migration CA"
chmod 0711 "$out/qemu-ca"
for h in "$@"; do
  mkhost "$out" "${h%%:*}" "${h#*:}"
  mkhost "$out/qemu-ca" "${h%%:*}" "${h#*:}" qemu
done
mkdir -p "$out/rogue-ca"
mkca "$out/rogue-ca" "vmsup test rogue CA"
mkhost "$out/rogue-ca" rogue 127.0.0.1

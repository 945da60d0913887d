#!/usr/bin/env bash
# Build-time helper (Dockerfile builder stages only): run a command trusting an extra CA bundle.
#
# Builds behind a TLS-inspecting proxy pass the proxy's CA as a build secret:
#   docker build --secret id=extra_ca,src=/path/ca.pem ...     (BuildKit)
#   podman build --secret id=extra_ca,src=/path/ca.pem ...     (buildah)
# The secret is mounted at /run/secrets/extra_ca for one RUN step only and never lands in a layer.
# Without it this script just runs the command.  With it, the base image's bundle plus the extra CA
# are written to a temporary file that pip, requests, curl, OpenSSL and apt are pointed at, and the
# file is removed when the command ends.
set -euo pipefail

extra="${EXTRA_CA_FILE:-/run/secrets/extra_ca}"
if [[ ! -s "$extra" ]]; then
    exec "$@"
fi

bundle="$(mktemp /tmp/extra-ca.XXXXXX)"
aptconf="$(mktemp /tmp/extra-ca-apt.XXXXXX)"
trap 'rm -f "$bundle" "$aptconf"' EXIT
for system in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [[ -s "$system" ]]; then
        cat "$system" >>"$bundle"
        break
    fi
done
cat "$extra" >>"$bundle"
printf 'Acquire::https::CAInfo "%s";\n' "$bundle" >"$aptconf"

export PIP_CERT="$bundle" REQUESTS_CA_BUNDLE="$bundle" SSL_CERT_FILE="$bundle" CURL_CA_BUNDLE="$bundle"
export APT_CONFIG="$aptconf"
"$@"

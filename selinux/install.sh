#!/usr/bin/env bash
# Install the wanrt SELinux policy on a host (RHEL/Fedora with container-selinux, or Debian/Ubuntu with
# refpolicy's container module): load the module (its port labels come with it), label the host
# directories, create the directories docker-compose.yml mounts.  Idempotent; run as root.
#
# Usage: selinux/install.sh [options]
#   --module FILE   a prebuilt wanrt.cil (selinux/build.sh, or the installer image's): nothing is compiled
#                   here (default: build it now with selinux/build.sh: needs make and the policy devel files)
#   --models DIR    model + engine store        (default /srv/wanrt/models)      -> wanrt_model_t
#   --outputs DIR   generated videos            (default /var/lib/wanrt/outputs) -> wanrt_output_t
#   --audit DIR     audit log directory         (default /var/log/wanrt)         -> wanrt_audit_t
#   --secrets DIR   TLS material + tokens file  (default /etc/wanrt/secrets)     -> wanrt_secret_t
#   --scratch DIR   caches, temporary files     (default /var/lib/wanrt/scratch) -> wanrt_tmp_t
#   --uid N         owner of the output, audit and scratch directories (default 10001, the image's user)
#   --allow-unconfined-docker  install even though a Docker engine here runs without SELinux support
#                   (only when wanrt runs under Podman on this host)
#   --uninstall     remove the module and the fcontext rules this script added
#   --dry-run       print the commands instead of running them
# Environment: SEMODULE_PRIORITY (default 400), SELINUX_DEVEL_MAKEFILE (default
# /usr/share/selinux/devel/Makefile).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
models=/srv/wanrt/models
outputs=/var/lib/wanrt/outputs
audit=/var/log/wanrt
secrets=/etc/wanrt/secrets
scratch=/var/lib/wanrt/scratch
module=""
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
        --scratch) scratch="$2"; shift 2 ;;
        --module) module="$2"; shift 2 ;;
        --uid) uid="$2"; shift 2 ;;
        --uninstall) uninstall=true; shift ;;
        --allow-unconfined-docker) allow_unconfined_docker=true; shift ;;
        --dry-run) dry_run=true; shift ;;
        -h | --help) sed -n '2,20p' "${BASH_SOURCE[0]}"; exit 0 ;;
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
    for tool in semodule restorecon; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found (RHEL: dnf install policycoreutils)"
    done
    if [[ -z "$module" ]]; then
        command -v make >/dev/null 2>&1 || die "make not found: pass --module wanrt.cil (prebuilt), or dnf install make"
        [[ -f "$makefile" ]] || die "$makefile not found: pass --module wanrt.cil (prebuilt), or dnf install selinux-policy-devel"
    fi
    semodule -l | grep -qx container || die "the container policy module is not loaded (RHEL: dnf install container-selinux)"
fi

# fcontext rules for the directories: selinux/wanrt.fc carries the defaults; other paths get local rules.
declare -A default_dirs=(
    [wanrt_model_t]=/srv/wanrt/models
    [wanrt_output_t]=/var/lib/wanrt/outputs
    [wanrt_secret_t]=/etc/wanrt/secrets
    [wanrt_audit_t]=/var/log/wanrt
    [wanrt_tmp_t]=/var/lib/wanrt/scratch
)
labels=("wanrt_model_t:$models" "wanrt_output_t:$outputs" "wanrt_audit_t:$audit" "wanrt_secret_t:$secrets"
        "wanrt_tmp_t:$scratch")

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

# 1. the module: prebuilt, or built now (rules and port labels in one CIL file), then loaded. Port labels
#    that versions before 2.0 added with `semanage port` would duplicate the module's: remove them first.
if [[ -z "$module" ]]; then
    build="$(mktemp -d)"
    trap 'rm -rf "$build"' EXIT
    run bash "$here/build.sh" "$build"
    module="$build/wanrt.cil"
fi
if command -v semanage >/dev/null 2>&1; then
    while read -r type proto port _; do
        [[ -z "$type" || "$type" == \#* ]] && continue
        if ! $dry_run && semanage port -l -C | grep -qE "^${type}[[:space:]]"; then
            run semanage port -d -p "$proto" "$port"
        fi
    done <"$here/wanrt.ports"
fi
run semodule -X "$priority" -i "$module"

# 2. directories: fcontext rules for non-default paths (semanage), then create and label.
for entry in "${labels[@]}"; do
    type="${entry%%:*}" dir="${entry#*:}"
    if ! is_default "$type" "$dir"; then
        spec="$(fcontext_spec "$dir")"
        $dry_run || command -v semanage >/dev/null 2>&1 \
            || die "semanage not found: $dir is not a default path (RHEL: dnf install policycoreutils-python-utils)"
        if ! run semanage fcontext -a -t "$type" "$spec" 2>/dev/null; then
            run semanage fcontext -m -t "$type" "$spec"
        fi
    fi
done
run install -d -m 0755 "$models"
run install -d -o "$uid" -g "$uid" -m 0750 "$outputs" "$audit" "$scratch"
run install -d -o root -g "$uid" -m 0750 "$secrets"
for entry in "${labels[@]}"; do
    run restorecon -RF "${entry#*:}"
done

echo "install.sh: wanrt policy loaded with its port labels ($(grep -Ev '^\s*(#|$)' "$here/wanrt.ports" | awk '{print $2 "/" $3 "=" $1}' | xargs));" \
     "$models $outputs $audit $secrets $scratch labelled"

#!/usr/bin/env bash
# Build the wanrt SELinux module, link it into a full policy together with the container and
# podman modules built from Debian's selinux-policy-src, and assert the security goals with
# setools (deploy/ci/selinux_goals.py).  Offline; needs no SELinux kernel; never touches the
# host's own policy store (it links into a private copy of /etc/selinux + /var/lib/selinux).
#
# Usage: deploy/ci/check-selinux.sh [--workdir DIR] [--json FILE] [--extra-module FILE.te]... [--no-neverallow]
#   --workdir DIR        keep build products here (default: a temporary directory, removed)
#   --json FILE          write the goal results as JSON
#   --extra-module F.te  also build and link this module (tests link deliberately bad modules)
#   --no-neverallow      link without the base policy's neverallow assertions (expand-check=0, Debian's
#                        default), so that the goal table alone judges a module; by default they are
#                        checked (expand-check=1) and a violation fails the link
#
# Exit: 0 goals hold; 1 a goal fails; 2 a tool is missing (run deploy/ci/install-tools.sh);
#       3 the module does not compile or link; 4 the goal checker itself failed (broken goal table).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
devel_makefile=/usr/share/selinux/devel/Makefile
policy_src=/usr/src/selinux-policy-src.tar.zst
py=/usr/bin/python3

workdir=""
json=""
extra=()
expand_check=1
while (($#)); do
    case "$1" in
        --workdir) workdir="$2"; shift 2 ;;
        --json) json="$2"; shift 2 ;;
        --extra-module) extra+=("$(realpath "$2")"); shift 2 ;;
        --no-neverallow) expand_check=0; shift ;;
        -h | --help) sed -n '2,19p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "check-selinux: unknown argument $1" >&2; exit 2 ;;
    esac
done

missing=()
for tool in make checkmodule semodule_package semodule matchpathcon zstd /usr/libexec/selinux/hll/pp; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[[ -f "$devel_makefile" ]] || missing+=("$devel_makefile (selinux-policy-dev)")
[[ -f "$policy_src" ]] || missing+=("$policy_src (selinux-policy-src)")
[[ -d /etc/selinux/default && -d /var/lib/selinux/default ]] || missing+=("policy store (selinux-policy-default)")
"$py" -c 'import setools' >/dev/null 2>&1 || missing+=("python3-setools")
if ((${#missing[@]})); then
    echo "check-selinux: missing: ${missing[*]} (run deploy/ci/install-tools.sh)" >&2
    exit 2
fi

cleanup=""
if [[ -z "$workdir" ]]; then
    workdir="$(mktemp -d)"
    cleanup="$workdir"
fi
trap 'if [[ -n "$cleanup" ]]; then rm -rf "$cleanup"; fi' EXIT
mkdir -p "$workdir"
workdir="$(realpath "$workdir")"

# build_module DIR: compile DIR/NAME.te (+ .if/.fc) with the policy devel Makefile.
build_module() {
    local dir="$1" name
    name="$(basename "$dir")"
    if ! make -s -C "$dir" -f "$devel_makefile" "$name.pp" >"$dir/build.log" 2>&1; then
        cat "$dir/build.log" >&2
        echo "check-selinux: module $name does not compile" >&2
        exit 3
    fi
}

# 1. container + podman modules from Debian's refpolicy source (cached in the workdir).
base="$workdir/base"
if [[ ! -f "$base/container/container.pp" || ! -f "$base/podman/podman.pp" ]]; then
    rm -rf "$base"
    mkdir -p "$base/container" "$base/podman"
    tar --zstd -xf "$policy_src" -C "$base" --strip-components=4 \
        selinux-policy-src/policy/modules/services/container.te \
        selinux-policy-src/policy/modules/services/container.if \
        selinux-policy-src/policy/modules/services/container.fc \
        selinux-policy-src/policy/modules/services/podman.te \
        selinux-policy-src/policy/modules/services/podman.if \
        selinux-policy-src/policy/modules/services/podman.fc
    mv "$base"/container.* "$base/container/"
    mv "$base"/podman.* "$base/podman/"
    build_module "$base/container"
    build_module "$base/podman"
fi
modules=("$base/container/container.pp" "$base/podman/podman.pp")

# 2. the wanrt module as shipped: one CIL file with the rules and the port labels (selinux/build.sh).
if ! bash "$repo/selinux/build.sh" "$workdir/wanrt" >"$workdir/wanrt-build.log" 2>&1; then
    cat "$workdir/wanrt-build.log" >&2
    exit 3
fi
modules+=("$workdir/wanrt/wanrt.cil")

# 3. extra modules (each FILE.te, with FILE.if / FILE.fc beside it when present).
for te in "${extra[@]}"; do
    name="$(basename "$te" .te)"
    dir="$workdir/extra/$name"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$te" "$dir/"
    for ext in if fc; do
        if [[ -f "${te%.te}.$ext" ]]; then cp "${te%.te}.$ext" "$dir/"; fi
    done
    build_module "$dir"
    modules+=("$dir/$name.pp")
done

# 4. link everything into a private copy of the policy store (the port labels come with wanrt.cil).
root="$workdir/root"
rm -rf "$root"
mkdir -p "$root/etc" "$root/var/lib"
cp -a /etc/selinux "$root/etc/"
cp -a /var/lib/selinux "$root/var/lib/"
conf="$root/etc/selinux/semanage.conf"
sed -i '/^[[:space:]]*expand-check[[:space:]]*=/d' "$conf"
echo "expand-check=$expand_check" >>"$conf"
if ! semodule -p "$root" -s default -n -i "${modules[@]}" >"$workdir/link.log" 2>&1; then
    grep -v 'not in password file' "$workdir/link.log" >&2 || true
    echo "check-selinux: linking failed (modules: ${modules[*]##*/}; neverallow checks: $expand_check)" >&2
    exit 3
fi
policy="$(find "$root/etc/selinux/default/policy" -name 'policy.[0-9]*' | sort | tail -n 1)"
echo "check-selinux: linked ${modules[*]##*/} into $policy (neverallow checks: $expand_check)"

# 5. the goals.
args=("$policy" --file-contexts "$root/etc/selinux/default/contexts/files/file_contexts")
if [[ -n "$json" ]]; then args+=(--json "$json"); fi
rc=0
"$py" "$here/selinux_goals.py" "${args[@]}" || rc=$?
if ((rc == 2)); then
    echo "check-selinux: the goal checker could not run (a goal names a type the policy lacks?)" >&2
    exit 4
fi
exit "$rc"

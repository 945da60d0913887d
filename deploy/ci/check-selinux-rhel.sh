#!/usr/bin/env bash
# The goal table on RHEL's own policy: build the targeted policy of a CentOS Stream / RHEL branch of
# fedora-selinux/selinux-policy from source, with container-selinux's own container module built in it from
# its source (as Fedora's and RHEL's selinux-policy package build it), link the shipped wanrt.cil at priority
# 400 into a private store, and run deploy/ci/selinux_goals.py on the result.
#
# Needs the two source trees (CI cannot reach GitHub, so CI runs deploy/ci/check-selinux.sh on Debian's
# refpolicy instead; this script is how the RHEL results in selinux/README.md were made and can be rerun):
#   git clone -b c10s https://github.com/fedora-selinux/selinux-policy        (c9s for RHEL 9)
#   git clone https://github.com/containers/container-selinux
#
# Usage: deploy/ci/check-selinux-rhel.sh --policy-src DIR --container-selinux DIR [--workdir DIR] [--json FILE]
# Minutes of CPU and ~2 GB of memory (the whole policy): run it under flock /work/wt/heavy.lock on shared hosts.
# Exit: 0 goals hold; 1 a goal fails; 2 usage or tools; 3 the policy does not build or link.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
policy_src="" container_src="" workdir="" json=""
while (($#)); do
    case "$1" in
        --policy-src) policy_src="$(realpath "$2")"; shift 2 ;;
        --container-selinux) container_src="$(realpath "$2")"; shift 2 ;;
        --workdir) workdir="$2"; shift 2 ;;
        --json) json="$2"; shift 2 ;;
        -h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "check-selinux-rhel: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ -f "$policy_src/Rules.modular" && -f "$container_src/container.te" ]] \
    || { echo "check-selinux-rhel: --policy-src (selinux-policy) and --container-selinux trees are required" >&2; exit 2; }
workdir="${workdir:-$(mktemp -d)}"
mkdir -p "$workdir"
workdir="$(realpath "$workdir")"

# 1. the policy tree, with container-selinux's module in it (Fedora's spec does the same with its sources).
tree="$workdir/policy"
rm -rf "$tree"
cp -a "$policy_src" "$tree"
cp "$container_src"/container.{te,if,fc} "$tree/policy/modules/contrib/"
# container-selinux's own spec file prepares its sources for RHEL <= 9 (no user_namespace class, /var/run file
# contexts): do the same when the policy tree is one of those.
if ! grep -qw user_namespace "$tree/policy/flask/security_classes"; then
    sed -i '/user_namespace/d' "$tree/policy/modules/contrib/container.te"
    sed -i 's|^/run/|/var/run/|' "$tree/policy/modules/contrib/container.fc"
    echo "check-selinux-rhel: RHEL <= 9 policy: container-selinux prepared as its spec does (no user_namespace)"
fi
grep -q '^container = ' "$tree/policy/modules.conf" || printf '\ncontainer = module\n' >>"$tree/policy/modules.conf"
opts=(NAME=targeted TYPE=mcs DISTRO=redhat UBAC=n DIRECT_INITRC=n MONOLITHIC=n MLS_CATS=1024 MCS_CATS=1024
      UNK_PERMS=allow PYTHON=/usr/bin/python3)
if ! make -C "$tree" "${opts[@]}" -j"$(nproc)" base.pp modules >"$workdir/build.log" 2>&1; then
    tail -n 20 "$workdir/build.log" >&2
    echo "check-selinux-rhel: the policy does not build (log: $workdir/build.log)" >&2
    exit 3
fi
# The distribution's seusers map logins to unconfined_u, which its users-targeted file (in the RPM's sources,
# not in this tree) defines: map them to users this tree defines, and package base again (no recompile).
printf 'root:system_u:s0-s0:c0.c1023\n__default__:user_u:s0\n' >"$tree/tmp/seusers"
semodule_package -o "$tree/base.pp" -m "$tree/tmp/base.mod" -f "$tree/base.fc" -u "$tree/tmp/users_extra" \
    -s "$tree/tmp/seusers"

# 2. a private store: the distribution's modules at priority 100, wanrt.cil at 400 (as install.sh loads it).
root="$workdir/root"
rm -rf "$root"
mkdir -p "$root/etc/selinux/targeted" "$root/var/lib/selinux/targeted"
printf 'SELINUX=enforcing\nSELINUXTYPE=targeted\n' >"$root/etc/selinux/config"
mapfile -t modules < <(find "$tree" -maxdepth 1 -name '*.pp' ! -name base.pp | sort)
bash "$repo/selinux/build.sh" "$workdir/wanrt" >/dev/null
# Linked as RHEL ships it (expand-check=0): container-selinux's own module does not pass the base policy's
# neverallow assertions (container_device_t and friends on device_node), so a whole-policy neverallow check
# cannot pass on RHEL whatever wanrt does. The wanrt module's rules are checked against neverallows on Debian
# (deploy/ci/check-selinux.sh), and here by the goal table.
printf 'module-store = direct\nexpand-check = 0\n' >"$root/etc/selinux/semanage.conf"
for step in "-X 100 -i $tree/base.pp ${modules[*]}" "-X 400 -i $workdir/wanrt/wanrt.cil"; do
    # shellcheck disable=SC2086 # the module lists are word lists on purpose
    if ! semodule -p "$root" -s targeted -n $step >"$workdir/link.log" 2>&1; then
        tail -n 20 "$workdir/link.log" >&2
        echo "check-selinux-rhel: linking failed" >&2
        exit 3
    fi
done
policy="$(find "$root/etc/selinux/targeted/policy" -name 'policy.[0-9]*' | sort | tail -n 1)"
echo "check-selinux-rhel: $(git -C "$policy_src" describe --always --all 2>/dev/null || echo "$policy_src") +" \
     "container-selinux $(git -C "$container_src" describe --tags --always 2>/dev/null || echo "$container_src") + wanrt.cil -> $policy"

# 3. the goals.
args=("$policy" --file-contexts "$root/etc/selinux/targeted/contexts/files/file_contexts")
if [[ -n "$json" ]]; then args+=(--json "$json"); fi
/usr/bin/python3 "$here/selinux_goals.py" "${args[@]}"

#!/usr/bin/env bash
# Build the wanrt SELinux module as ONE CIL file that carries the rules AND the port labels: wanrt.te/.if/.fc
# compiled with the policy devel Makefile, converted to CIL (libsemanage's pp converter), and the portcon
# statements of wanrt.ports appended (a .te module cannot hold portcon; a CIL module can). `semodule -i
# wanrt.cil` then needs no compiler, make or semanage on the node: what RHCOS, OpenShift and the installer
# image rely on.
#
# Usage: selinux/build.sh OUTDIR          writes OUTDIR/wanrt.pp and OUTDIR/wanrt.cil
# Environment: SELINUX_DEVEL_MAKEFILE (default /usr/share/selinux/devel/Makefile),
#              PP_TO_CIL (default /usr/libexec/selinux/hll/pp)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:?usage: selinux/build.sh OUTDIR}"
makefile="${SELINUX_DEVEL_MAKEFILE:-/usr/share/selinux/devel/Makefile}"
pp_to_cil="${PP_TO_CIL:-/usr/libexec/selinux/hll/pp}"
for need in "$makefile" "$pp_to_cil"; do
    [[ -e "$need" ]] || { echo "build.sh: $need not found (RHEL: dnf install selinux-policy-devel policycoreutils; Debian: apt install selinux-policy-dev semodule-utils)" >&2; exit 2; }
done

mkdir -p "$out"
out="$(realpath "$out")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/wanrt.te" "$here/wanrt.if" "$here/wanrt.fc" "$work/"
if ! make -s -C "$work" -f "$makefile" wanrt.pp >"$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    echo "build.sh: wanrt.te does not compile" >&2
    exit 3
fi
cp "$work/wanrt.pp" "$out/wanrt.pp"
{
    "$pp_to_cil" "$work/wanrt.pp"
    echo ";; port labels from selinux/wanrt.ports"
    while read -r type proto port _; do
        [[ -z "$type" || "$type" == \#* ]] && continue
        echo "(portcon $proto $port (system_u object_r $type ((s0) (s0))))"
    done <"$here/wanrt.ports"
} >"$work/wanrt.cil"
mv "$work/wanrt.cil" "$out/wanrt.cil"
echo "build.sh: $out/wanrt.cil ($(grep -c '^(portcon' "$out/wanrt.cil") port labels)"

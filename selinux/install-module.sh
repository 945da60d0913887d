#!/usr/bin/env bash
# Load the prebuilt wanrt SELinux module (rules and port labels) into the node's policy with the node's own
# semodule, from the installer image (deploy/selinux-installer/Containerfile). Idempotent: a module already
# loaded with the same content is left alone, so a recreated pod does not rebuild the node's policy.
#
# The node's root file system is mounted at $HOST_ROOT (default /host); $CHROOT runs a command in it.
set -euo pipefail

host="${HOST_ROOT:-/host}"
chroot_cmd="${CHROOT:-chroot}"
module="${WANRT_MODULE:-/wanrt/wanrt.cil}"
state=/var/lib/wanrt-selinux

[[ -s "$module" ]] || { echo "install-module: $module missing from the image" >&2; exit 1; }
"$chroot_cmd" "$host" /usr/sbin/selinuxenabled \
    || { echo "install-module: SELinux is disabled on this node: nothing to install, wanrt pods will refuse to start here" >&2; exit 1; }

digest="$(sha256sum "$module" | cut -d' ' -f1)"
if [[ "$(cat "$host$state/loaded.sha256" 2>/dev/null || true)" == "$digest" ]] \
        && "$chroot_cmd" "$host" /usr/sbin/semodule -l | grep -qx wanrt; then
    echo "install-module: wanrt module $digest already loaded"
    exit 0
fi
install -d -m 0700 "$host$state"
install -m 0600 "$module" "$host$state/wanrt.cil"
"$chroot_cmd" "$host" /usr/sbin/semodule -X 400 -i "$state/wanrt.cil"
"$chroot_cmd" "$host" /usr/sbin/semodule -l | grep -qx wanrt \
    || { echo "install-module: semodule did not load wanrt" >&2; exit 1; }
echo "$digest" >"$host$state/loaded.sha256"
echo "install-module: wanrt module $digest loaded (port labels included)"

#!/usr/bin/env bash
# Print a MachineConfig that loads the wanrt SELinux module, port labels included, on every node of a
# machine-config pool (OpenShift; RHCOS has no compiler and no semanage: the module comes built, as CIL, and
# semodule alone loads it).
#
# Usage: deploy/k8s/openshift/machineconfig.sh WANRT_CIL [POOL]   > 99-wanrt-selinux.yaml
#   WANRT_CIL  wanrt.cil from selinux/build.sh (on RHEL 9/10 with selinux-policy-devel, or the installer image's)
#   POOL       machine-config pool (default: worker)
# Then: oc apply -f 99-wanrt-selinux.yaml  (the pool's nodes reboot one at a time), and label those nodes
# wanrt.io/selinux-module=<the module's version> (the server pods require it).
set -euo pipefail

pp="${1:?usage: machineconfig.sh WANRT_CIL [POOL]}"
pool="${2:-worker}"
[[ -s "$pp" ]] || { echo "machineconfig.sh: $pp is not a non-empty file" >&2; exit 2; }
grep -q '^(portcon ' "$pp" || { echo "machineconfig.sh: $pp carries no port labels: build it with selinux/build.sh" >&2; exit 2; }
sha="$(sha256sum "$pp" | cut -d' ' -f1)"

cat <<YAML
apiVersion: machineconfiguration.openshift.io/v1
kind: MachineConfig
metadata:
  name: 99-${pool}-wanrt-selinux
  labels:
    machineconfiguration.openshift.io/role: ${pool}
spec:
  config:
    ignition:
      version: 3.4.0
    storage:
      files:
        - path: /etc/wanrt/selinux/wanrt.cil
          mode: 0644
          overwrite: true
          contents:
            source: data:;base64,$(base64 -w0 "$pp")
            verification:
              hash: sha256-${sha}
    systemd:
      units:
        - name: wanrt-selinux.service
          enabled: true
          contents: |
            [Unit]
            Description=Load the wanrt SELinux module (rules and port labels)
            Before=kubelet.service
            ConditionPathExists=/etc/wanrt/selinux/wanrt.cil
            [Service]
            Type=oneshot
            RemainAfterExit=yes
            ExecStart=/usr/sbin/semodule -X 400 -i /etc/wanrt/selinux/wanrt.cil
            [Install]
            WantedBy=multi-user.target
YAML

#!/usr/bin/env bash
# Print a MachineConfig that installs the wanrt SELinux module and its port labels on every node of a
# machine-config pool (OpenShift; RHCOS has no compiler, so the module comes built).
#
# Usage: deploy/k8s/openshift/machineconfig.sh WANRT_PP [POOL]   > 99-wanrt-selinux.yaml
#   WANRT_PP  wanrt.pp built on RHEL 9 against container-selinux:
#             make -f /usr/share/selinux/devel/Makefile wanrt.pp   (in a copy of selinux/)
#   POOL      machine-config pool (default: worker)
# Then: oc apply -f 99-wanrt-selinux.yaml  (the pool's nodes reboot one at a time).
set -euo pipefail

pp="${1:?usage: machineconfig.sh WANRT_PP [POOL]}"
pool="${2:-worker}"
[[ -s "$pp" ]] || { echo "machineconfig.sh: $pp is not a non-empty file" >&2; exit 2; }
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ports="$here/../../../selinux/wanrt.ports"

# One semanage call per labelled port, the same table selinux/install.sh applies.
label_ports=""
while read -r type proto port _; do
    [[ -z "$type" || "$type" == \#* ]] && continue
    label_ports+="ExecStart=/bin/sh -c 'semanage port -a -t $type -p $proto $port || semanage port -m -t $type -p $proto $port'"$'\n'
done <"$ports"
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
        - path: /etc/wanrt/selinux/wanrt.pp
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
            Description=Load the wanrt SELinux module and label its ports
            Before=kubelet.service
            ConditionPathExists=/etc/wanrt/selinux/wanrt.pp
            [Service]
            Type=oneshot
            RemainAfterExit=yes
            ExecStart=/usr/sbin/semodule -X 400 -i /etc/wanrt/selinux/wanrt.pp
$(printf '%s' "$label_ports" | sed 's/^/            /')
            [Install]
            WantedBy=multi-user.target
YAML

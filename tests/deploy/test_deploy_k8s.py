"""The Kubernetes manifests (deploy/k8s), checked without a cluster: `kubectl kustomize` renders every
overlay, kubernetes-validate accepts every object against the targeted Kubernetes version's schemas, and
the security properties hold object by object, in what would really be applied."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_support import REPO, require_tool

K8S = REPO / "deploy" / "k8s"
TARGET_VERSION = "1.34.0"  # the oldest Kubernetes the manifests target (ValidatingAdmissionPolicy GA: 1.30)
RENDERED = ["overlays/cpu", "overlays/gpu", "openshift", "selinux-installer"]
# Kinds that come from CRDs (KEDA, Prometheus Operator, OpenShift): no upstream schema to validate against.
CRD_KINDS = {"ScaledObject", "ServiceMonitor", "SecurityContextConstraints"}
SERVE_GRACE_SECONDS = 30


def _render(overlay: str) -> list[dict]:
    yaml = pytest.importorskip("yaml")
    kubectl = require_tool("kubectl")
    out = subprocess.run([kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=RENDERED)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return request.param, _render(request.param)


def _one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _server(overlay: str) -> tuple[list[dict], dict, dict]:
    objects = _render(overlay)
    deployment = _one(objects, "Deployment", "wanrt")
    return objects, deployment, deployment["spec"]["template"]["spec"]


def _arg(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def test_every_object_validates_against_the_kubernetes_schemas(rendered, tmp_path):
    overlay, objects = rendered
    validator = require_tool("kubernetes-validate")
    yaml = pytest.importorskip("yaml")
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(objects), encoding="utf-8")
    out = subprocess.run([validator, "-k", TARGET_VERSION, "--strict", str(manifest)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    passed = out.stdout.count(" passed for resource ")
    unknown = {o["kind"] for o in objects} & CRD_KINDS
    assert passed == len([o for o in objects if o["kind"] not in CRD_KINDS]), out.stdout
    assert out.stdout.count("Couldn't find schema") == len([o for o in objects if o["kind"] in unknown])


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu", "openshift"])
def test_server_pod_is_confined(overlay):
    objects, deployment, pod = _server(overlay)
    security = pod["securityContext"]
    assert security["seLinuxOptions"]["type"] == "wanrt_container_t"
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    account = _one(objects, "ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert not any("hostPath" in v for v in pod["volumes"])
    for container in pod["containers"] + pod.get("initContainers", []):
        c = container["securityContext"]
        assert c["allowPrivilegeEscalation"] is False and c["readOnlyRootFilesystem"] is True
        assert c["capabilities"]["drop"] == ["ALL"] and "add" not in c["capabilities"]
        assert not c.get("privileged")
    assert pod["terminationGracePeriodSeconds"] > SERVE_GRACE_SECONDS
    args = pod["containers"][0]["args"]
    assert float(_arg(args, "--grace-seconds")) == SERVE_GRACE_SECONDS
    assert _arg(args, "--require-selinux-type") == "wanrt_container_t"


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_server_needs_mutual_tls_and_tokens_from_secrets(overlay):
    _objects, _deployment, pod = _server(overlay)
    container = pod["containers"][0]
    args = container["args"]
    assert "--insecure" not in args
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    for flag in ("--tls-cert", "--tls-key", "--client-ca", "--tokens"):
        path = Path(_arg(args, flag))
        mount = mounts[str(path.parent)]
        assert mount["readOnly"] is True and mount["name"] in secrets, flag


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_volumes_models_read_only_and_audit_apart(overlay):
    objects, _deployment, pod = _server(overlay)
    container = pod["containers"][0]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    models = mounts["/models"]
    assert models["readOnly"] is True and volumes[models["name"]]["persistentVolumeClaim"]["readOnly"] is True
    audit_log = Path(_arg(container["args"], "--audit-log"))
    audit_mount = mounts[str(audit_log.parent)]
    audit_claim = volumes[audit_mount["name"]]["persistentVolumeClaim"]["claimName"]
    outputs_volume = volumes[mounts["/var/lib/wanrt/outputs"]["name"]]
    assert outputs_volume.get("persistentVolumeClaim", {}).get("claimName") != audit_claim
    # One file per replica: replicas never append to the same file.
    assert "$(POD_NAME)" in audit_log.name
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    _one(objects, "PersistentVolumeClaim", audit_claim)


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_probes_are_native_grpc_on_the_health_only_listener(overlay):
    _objects, _deployment, pod = _server(overlay)
    container = pod["containers"][0]
    args = container["args"]
    health_port = int(_arg(args, "--health-listen").rsplit(":", 1)[1])
    grpc_port = int(_arg(args, "--listen").rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": grpc_port, "metrics": int(_arg(args, "--metrics-listen").rsplit(":", 1)[1]),
                     "health": health_port}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == health_port, probe
    # readiness follows the service's own status: NOT_SERVING while draining or without an audit trail
    assert container["readinessProbe"]["grpc"]["service"] == "wanrt.v1.VideoGeneration"


def test_gpu_overlay_asks_for_one_gpu_and_runs_tensorrt():
    _objects, _deployment, pod = _server("overlays/gpu")
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert _arg(container["args"], "--backend") == "tensorrt"
    assert _arg(container["args"], "--device") == "cuda:0"
    assert container["image"] == "wanrt:gpu"
    cpu = _server("overlays/cpu")[2]["containers"][0]
    assert _arg(cpu["args"], "--backend") == "onnxruntime" and "nvidia.com/gpu" not in str(cpu["resources"])


def test_network_policy_admits_clients_and_monitoring_and_no_egress():
    objects = _render("overlays/gpu")
    policy = _one(objects, "NetworkPolicy", "wanrt")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["spec"]["egress"] == []
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(by_port) == {"grpc", "metrics"}
    assert by_port["grpc"][0]["podSelector"]["matchLabels"] == {"wanrt.io/client": "true"}
    assert by_port["metrics"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}


def test_namespace_pod_security_and_the_admission_policy_that_replaces_it():
    objects = _render("overlays/gpu")
    labels = _one(objects, "Namespace", "wanrt")["metadata"]["labels"]
    # A custom SELinux type is refused by baseline and restricted: enforce privileged, warn/audit restricted.
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"
    policy = _one(objects, "ValidatingAdmissionPolicy", "wanrt-confinement")
    assert "namespace" not in policy["metadata"]  # cluster-scoped
    text = " ".join(v["expression"] for v in policy["spec"]["validations"])
    for needle in ("wanrt_container_t", "runAsNonRoot", "RuntimeDefault", "allowPrivilegeEscalation",
                   "readOnlyRootFilesystem", "'ALL'", "hostPath", "hostNetwork"):
        assert needle in text, needle
    binding = _one(objects, "ValidatingAdmissionPolicyBinding", "wanrt-confinement")
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "wanrt"}


def test_scaling_disruption_and_monitoring_target_the_server():
    objects = _render("overlays/gpu")
    scaled = _one(objects, "ScaledObject", "wanrt")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "wanrt"
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus" and "wanrt_live_jobs" in trigger["metadata"]["query"]
    from wanrt.server.metrics import Metrics  # the metric the scaler reads is one the server exports

    assert "wanrt_live_jobs" in {m.name for m in Metrics().registry.collect()}
    pdb = _one(objects, "PodDisruptionBudget", "wanrt")
    deployment = _one(objects, "Deployment", "wanrt")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert _one(objects, "Service", "wanrt")["spec"]["selector"] == selector
    monitor = _one(objects, "ServiceMonitor", "wanrt")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_openshift_scc_admits_exactly_the_wanrt_pod():
    objects = _render("openshift")
    scc = _one(objects, "SecurityContextConstraints", "wanrt")
    assert scc["seLinuxContext"] == {"type": "MustRunAs", "seLinuxOptions": {"type": "wanrt_container_t",
                                                                             "level": "s0:c100,c200"}}
    assert scc["runAsUser"] == {"type": "MustRunAs", "uid": 10001}
    assert scc["requiredDropCapabilities"] == ["ALL"] and scc["allowedCapabilities"] == []
    assert scc["readOnlyRootFilesystem"] is True and scc["allowPrivilegedContainer"] is False
    assert not any(scc[k] for k in ("allowHostNetwork", "allowHostPID", "allowHostIPC", "allowHostPorts",
                                    "allowHostDirVolumePlugin"))
    assert "hostPath" not in scc["volumes"] and scc["users"] == [] and scc["groups"] == []
    role = _one(objects, "Role", "wanrt-use-scc")
    assert role["rules"] == [{"apiGroups": ["security.openshift.io"], "resources": ["securitycontextconstraints"],
                              "resourceNames": ["wanrt"], "verbs": ["use"]}]
    binding = _one(objects, "RoleBinding", "wanrt-use-scc")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "wanrt", "namespace": "wanrt"}]
    pod = _one(objects, "Deployment", "wanrt")["spec"]["template"]["spec"]
    assert pod["securityContext"]["seLinuxOptions"] == scc["seLinuxContext"]["seLinuxOptions"]
    labels = _one(objects, "Namespace", "wanrt")["metadata"]["labels"]
    assert labels["security.openshift.io/scc.podSecurityLabelSync"] == "false"


def test_selinux_installer_is_the_only_privileged_thing_and_lives_apart():
    installer = _render("selinux-installer")
    namespace = _one(installer, "Namespace")["metadata"]["name"]
    daemonset = _one(installer, "DaemonSet")
    assert namespace != "wanrt" and daemonset["metadata"]["namespace"] == namespace
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    privileged = [c["name"] for c in pod["initContainers"] + pod["containers"]
                  if c.get("securityContext", {}).get("privileged")]
    assert privileged == ["install"]
    assert "install.sh" in " ".join(pod["initContainers"][0]["args"])
    # and nothing privileged comes with the service itself
    for overlay in ("overlays/cpu", "overlays/gpu", "openshift"):
        for obj in _render(overlay):
            assert obj["metadata"].get("namespace") != namespace


def test_machineconfig_embeds_the_module_and_labels_every_port(tmp_path):
    yaml = pytest.importorskip("yaml")
    make = shutil.which("make")
    makefile = Path("/usr/share/selinux/devel/Makefile")
    if make is None or not makefile.exists():
        pytest.skip("the SELinux devel Makefile is not installed (install with deploy/ci/install-tools.sh)")
    for ext in ("te", "if", "fc"):
        shutil.copy(REPO / "selinux" / f"wanrt.{ext}", tmp_path)
    subprocess.run([make, "-s", "-C", str(tmp_path), "-f", str(makefile), "wanrt.pp"], check=True,
                   capture_output=True, timeout=300)
    module = tmp_path / "wanrt.pp"
    out = subprocess.run(["bash", str(K8S / "openshift/machineconfig.sh"), str(module), "gpu"], capture_output=True,
                         text=True, check=True).stdout
    config = yaml.safe_load(out)
    assert config["kind"] == "MachineConfig" and config["metadata"]["labels"] == {
        "machineconfiguration.openshift.io/role": "gpu"}
    (file,) = config["spec"]["config"]["storage"]["files"]
    embedded = base64.b64decode(file["contents"]["source"].split("base64,", 1)[1])
    assert embedded == module.read_bytes()
    assert file["contents"]["verification"]["hash"] == "sha256-" + hashlib.sha256(embedded).hexdigest()
    (unit,) = config["spec"]["config"]["systemd"]["units"]
    for line in (REPO / "selinux/wanrt.ports").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            type_, proto, port = line.split()
            assert f"semanage port -a -t {type_} -p {proto} {port}" in unit["contents"]
    refused = subprocess.run(["bash", str(K8S / "openshift/machineconfig.sh"), str(tmp_path / "absent.pp")],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "absent.pp" in refused.stderr

"""The Kubernetes manifests (deploy/k8s), checked without a cluster: `kubectl kustomize` renders every
overlay, kubernetes-validate accepts every object against the targeted Kubernetes version's schemas, and
the security properties hold object by object, in what would really be applied."""

from __future__ import annotations

import base64
import copy
import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest
from deploy_support import INSTALL_HINT, REPO, load_yaml, require_tool

K8S = REPO / "deploy" / "k8s"
TARGET_VERSION = "1.34.0"  # the oldest Kubernetes the manifests target (ValidatingAdmissionPolicy GA: 1.30)
RENDERED = ["overlays/cpu", "overlays/gpu", "openshift", "selinux-installer"]
# Kinds that come from CRDs (KEDA, Prometheus Operator, OpenShift): no upstream schema to validate against.
CRD_KINDS = {"ScaledObject", "ServiceMonitor", "SecurityContextConstraints", "TriggerAuthentication"}


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
    args = pod["containers"][0]["args"]
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
    # what the policy's expressions admit and refuse: test_admission_policy_admits_the_server_and_refuses_...
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


def _module_version() -> str:
    te = (REPO / "selinux/wanrt.te").read_text(encoding="utf-8")
    return re.search(r"policy_module\(wanrt,\s*([\d.]+)\)", te).group(1)


# ---- admission: the whole restricted profile but the SELinux type, ephemeral containers included --------------

def _cel_policy(policy: dict) -> list:
    """(message, compiled expression) per validation, each with the policy's variables inlined (the apiserver
    evaluates them lazily, with the same meaning)."""
    cel_mod = pytest.importorskip("cel_expr_python.cel", reason=f"cel-expr-python not installed ({INSTALL_HINT})")
    from cel_expr_python.ext.ext_optional import ExtOptional
    from cel_expr_python.ext.ext_strings import ExtStrings

    env = cel_mod.NewEnv(variables={"object": cel_mod.Type.DYN}, extensions=[ExtOptional(), ExtStrings()])
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}

    def inline(expression: str) -> str:
        return re.sub(r"variables\.(\w+)", lambda m: f"({variables[m.group(1)]})", expression)

    return [(v["message"], env.compile(inline(v["expression"]))) for v in policy["spec"]["validations"]]


def _refusals(policy: list, pod: dict) -> list[str]:
    """The messages of every validation the pod fails (what the apiserver would answer), [] when admitted."""
    failed = []
    for message, expression in policy:
        result = expression.eval(data={"object": pod}).plain_value()
        assert isinstance(result, bool), f"{message}: evaluated to {result!r}"
        if not result:
            failed.append(message)
    return failed


def _pod(overlay: str) -> dict:
    _objects, deployment, _spec = _server(overlay)
    template = copy.deepcopy(deployment["spec"]["template"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wanrt-x", "namespace": "wanrt",
                                                             **template.get("metadata", {})},
            "spec": template["spec"]}


def _debug_container(security: dict | None) -> dict:
    container = {"name": "debugger", "image": "busybox", "targetContainerName": "wanrt"}
    if security is not None:
        container["securityContext"] = security
    return container


_CONFINED_DEBUG = {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
                   "capabilities": {"drop": ["ALL"]}}
# (what is changed, the validation message that must refuse it): one per restricted control, and kubectl debug.
VIOLATIONS = [
    ("ephemeral privileged (kubectl debug --profile=sysadmin)",
     lambda p: p["spec"].setdefault("ephemeralContainers", []).append(_debug_container({"privileged": True})),
     "allowPrivilegeEscalation false"),
    ("ephemeral without securityContext (kubectl debug)",
     lambda p: p["spec"].setdefault("ephemeralContainers", []).append(_debug_container(None)),
     "allowPrivilegeEscalation false"),
    ("ephemeral as container_t", lambda p: p["spec"].setdefault("ephemeralContainers", []).append(
        _debug_container({**_CONFINED_DEBUG, "seLinuxOptions": {"type": "spc_t"}})), "wanrt_container_t"),
    ("pod SELinux type", lambda p: p["spec"]["securityContext"]["seLinuxOptions"].update(type="container_t"),
     "wanrt_container_t"),
    ("pod SELinux user", lambda p: p["spec"]["securityContext"]["seLinuxOptions"].update(user="system_u"),
     "no SELinux user or role"),
    ("container SELinux role", lambda p: p["spec"]["containers"][0]["securityContext"].update(
        seLinuxOptions={"role": "system_r"}), "no SELinux user or role"),
    ("runAsNonRoot false", lambda p: p["spec"]["containers"][0]["securityContext"].update(runAsNonRoot=False),
     "runAsNonRoot"),
    ("runAsUser 0", lambda p: p["spec"]["containers"][0]["securityContext"].update(runAsUser=0), "runAsUser"),
    ("pod seccomp Unconfined", lambda p: p["spec"]["securityContext"].update(seccompProfile={"type": "Unconfined"}),
     "seccomp"),
    ("container seccomp Unconfined", lambda p: p["spec"]["containers"][0]["securityContext"].update(
        seccompProfile={"type": "Unconfined"}), "seccomp"),
    ("container AppArmor Unconfined", lambda p: p["spec"]["containers"][0]["securityContext"].update(
        appArmorProfile={"type": "Unconfined"}), "AppArmor"),
    ("AppArmor annotation unconfined", lambda p: p["metadata"].setdefault("annotations", {}).update(
        {"container.apparmor.security.beta.kubernetes.io/wanrt": "unconfined"}), "AppArmor"),
    ("procMount Unmasked", lambda p: p["spec"]["containers"][0]["securityContext"].update(procMount="Unmasked"),
     "procMount"),
    ("capability added", lambda p: p["spec"]["containers"][0]["securityContext"]["capabilities"].update(
        add=["NET_RAW"]), "add none"),
    ("privilege escalation", lambda p: p["spec"]["containers"][0]["securityContext"].update(
        allowPrivilegeEscalation=True), "allowPrivilegeEscalation false"),
    ("hostNetwork", lambda p: p["spec"].update(hostNetwork=True), "host namespaces"),
    ("hostPort", lambda p: p["spec"]["containers"][0]["ports"][0].update(hostPort=50051), "host ports"),
    ("sysctls", lambda p: p["spec"]["securityContext"].update(sysctls=[{"name": "net.ipv4.tcp_syncookies",
                                                                        "value": "0"}]), "sysctls"),
    ("Windows host process", lambda p: p["spec"]["containers"][0]["securityContext"].update(
        windowsOptions={"hostProcess": True}), "host processes"),
    ("hostPath volume", lambda p: p["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "volumes"),
    ("NFS volume outside a claim", lambda p: p["spec"]["volumes"].append(
        {"name": "n", "nfs": {"server": "nfs", "path": "/x"}}), "volumes"),
]


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_admission_policy_admits_the_server_and_refuses_each_restricted_violation(overlay):
    objects = _render(overlay)
    policy_object = _one(objects, "ValidatingAdmissionPolicy", "wanrt-confinement")
    rule = policy_object["spec"]["matchConstraints"]["resourceRules"][0]
    assert {"pods", "pods/ephemeralcontainers"} <= set(rule["resources"]) and "UPDATE" in rule["operations"]
    policy = _cel_policy(policy_object)
    pod = _pod(overlay)
    assert _refusals(policy, pod) == []
    debug = copy.deepcopy(pod)  # a confined debug container (kubectl debug --profile=restricted) is admitted
    debug["spec"]["ephemeralContainers"] = [_debug_container(_CONFINED_DEBUG)]
    assert _refusals(policy, debug) == []
    for name, change, message in VIOLATIONS:
        bad = copy.deepcopy(pod)
        change(bad)
        refused = _refusals(policy, bad)
        assert any(message in m for m in refused), f"{name}: admitted (refusals: {refused})"


# ---- scheduling, scaling, disruption, drain -----------------------------------------------------------------

@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu", "openshift"])
def test_pods_run_only_on_nodes_that_have_this_module(overlay):
    _objects, _deployment, pod = _server(overlay)
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "wanrt.io/selinux-module", "operator": "In",
                                            "values": [_module_version()]}]}]
    installer = _one(_render("selinux-installer"), "DaemonSet")["spec"]["template"]["spec"]
    assert installer["nodeSelector"] == {"wanrt.io/selinux-module": _module_version()}


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu", "openshift"])
def test_keda_owns_the_count_and_disruptions_never_take_the_last_replica(overlay):
    objects, deployment, pod = _server(overlay)
    scaled = _one(objects, "ScaledObject", "wanrt")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"]  # an apply would reset KEDA's count
    pdb = _one(objects, "PodDisruptionBudget", "wanrt")
    assert "maxUnavailable" not in pdb["spec"] and pdb["spec"]["minAvailable"] == 1
    assert scaled["spec"]["minReplicaCount"] > pdb["spec"]["minAvailable"]  # so a drain can proceed, one at a time
    # One GPU per replica, no spare GPU: a rollout never runs more pods than replicas (no surge waiting for a GPU).
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    startup = pod["containers"][0]["startupProbe"]
    budget = pod["terminationGracePeriodSeconds"] + startup["periodSeconds"] * startup["failureThreshold"]
    assert deployment["spec"]["progressDeadlineSeconds"] >= budget


@pytest.mark.parametrize(("overlay", "at_least"), [("overlays/cpu", 120), ("overlays/gpu", 1800)])
def test_drain_lets_running_videos_finish(overlay, at_least):
    """One setting (settings.yaml) sizes the kubelet's deadline and the server's drain; preStop stops admission
    first; readiness follows admission while liveness stays up (tests/server/test_server_reload.py)."""
    from wanrt.cli import build_parser
    from wanrt.server.app import STOP_MARGIN_S

    objects, _deployment, pod = _server(overlay)
    assert not [o for o in objects if o["metadata"]["name"] == "wanrt-settings"]  # local-config: never applied
    settings = load_yaml(K8S / overlay / "settings.yaml")
    deadline = int(settings["data"]["stopTimeoutSeconds"])
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert pod["terminationGracePeriodSeconds"] == deadline == int(env["WANRT_STOP_TIMEOUT"]) >= at_least
    assert "--grace-seconds" not in container["args"]  # --stop-timeout (from the env) governs the drain
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["wanrt", "stop-admission"]
    parsed = build_parser().parse_args(command[1:])
    assert parsed.pid == 1 and deadline - parsed.then_wait - STOP_MARGIN_S >= at_least - 30
    assert container["readinessProbe"]["grpc"]["service"] == "wanrt.v1.VideoGeneration"
    assert "service" not in container["livenessProbe"]["grpc"]
    serve = build_parser().parse_args(container["args"])
    assert serve.handler.__name__ == "_serve"


# ---- OpenShift monitoring -----------------------------------------------------------------------------------

def test_openshift_uses_user_workload_monitoring_with_an_authenticated_query():
    objects = _render("openshift")
    assert not any(o["metadata"].get("namespace") == "monitoring" for o in objects)
    policy = _one(objects, "NetworkPolicy", "wanrt")
    metrics = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "metrics")
    assert metrics["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "openshift-user-workload-monitoring"}
    trigger = _one(objects, "ScaledObject", "wanrt")["spec"]["triggers"][0]
    meta = trigger["metadata"]
    assert meta["serverAddress"] == "https://thanos-querier.openshift-monitoring.svc.cluster.local:9092"
    assert meta["namespace"] == "wanrt" and meta["authModes"] == "bearer" and "wanrt_live_jobs" in meta["query"]
    auth = _one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    secret = _one(objects, "Secret", refs["bearerToken"][0])
    assert refs["bearerToken"][1] == "token" and refs["ca"] == (secret["metadata"]["name"], "ca.crt")
    assert secret["type"] == "kubernetes.io/service-account-token"
    account = secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    binding = next(b for b in objects if b["kind"] == "RoleBinding"
                   and b["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "wanrt"}])
    role = _one(objects, "Role", binding["roleRef"]["name"])
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]} in role["rules"]
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in role["rules"])
    assert _one(objects, "ServiceMonitor", "wanrt")["metadata"]["namespace"] == "wanrt"


# ---- the SELinux module on the nodes -------------------------------------------------------------------------

def test_selinux_installer_is_a_pinned_image_with_a_prebuilt_module():
    installer = _render("selinux-installer")
    namespace = _one(installer, "Namespace")["metadata"]["name"]
    daemonset = _one(installer, "DaemonSet")
    assert namespace != "wanrt" and daemonset["metadata"]["namespace"] == namespace
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    privileged = [c["name"] for c in pod["initContainers"] + pod["containers"]
                  if c.get("securityContext", {}).get("privileged")]
    assert privileged == ["install"]
    (install,) = pod["initContainers"]
    name, _, digest = install["image"].partition("@sha256:")
    assert re.fullmatch(r"[0-9a-f]{64}", digest), install["image"]  # pinned by digest, never a tag
    assert "command" not in install and "args" not in install  # the image's own entrypoint, nothing injected
    assert not any("configMap" in v for v in pod["volumes"])
    containerfile = (REPO / "deploy/selinux-installer/Containerfile").read_text(encoding="utf-8")
    assert "selinux/build.sh" in containerfile and "install-module.sh" in containerfile
    for overlay in ("overlays/cpu", "overlays/gpu", "openshift"):  # nothing privileged comes with the service
        for obj in _render(overlay):
            assert obj["metadata"].get("namespace") != namespace


def _fake_node(tmp_path: Path, enabled: bool = True) -> tuple[dict, Path]:
    """A node root and a chroot stand-in that runs the node's tools from it (recording semodule calls)."""
    host = tmp_path / "host"
    sbin = host / "usr/sbin"
    sbin.mkdir(parents=True)
    (sbin / "selinuxenabled").write_text(f"#!/bin/sh\nexit {0 if enabled else 1}\n")
    (sbin / "semodule").write_text('#!/bin/sh\necho "$@" >>"$HOST/semodule.log"\n'
                                   'if [ "$1" = -l ]; then [ -f "$HOST/loaded" ] && echo wanrt; exit 0; fi\n'
                                   'touch "$HOST/loaded"\n')
    chroot = tmp_path / "chroot"
    chroot.write_text('#!/bin/sh\nHOST="$1"; export HOST; shift; cmd="$1"; shift; exec "$HOST$cmd" "$@"\n')
    for tool in (sbin / "selinuxenabled", sbin / "semodule", chroot):
        tool.chmod(0o755)
    module = tmp_path / "wanrt.cil"
    module.write_text("(type wanrt_container_t)\n"
                      "(portcon tcp 50051 (system_u object_r wanrt_grpc_port_t ((s0) (s0))))\n")
    return {**os.environ, "HOST_ROOT": str(host), "CHROOT": str(chroot), "WANRT_MODULE": str(module)}, host


def test_installer_loads_the_module_once_with_the_nodes_semodule(tmp_path):
    script = ["bash", str(REPO / "selinux/install-module.sh")]
    env, host = _fake_node(tmp_path)
    first = subprocess.run(script, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert (host / "semodule.log").read_text().splitlines()[0] == "-X 400 -i /var/lib/wanrt-selinux/wanrt.cil"
    assert (host / "var/lib/wanrt-selinux/wanrt.cil").read_bytes() == Path(env["WANRT_MODULE"]).read_bytes()
    again = subprocess.run(script, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "already loaded" in again.stdout
    assert sum("-i" in line for line in (host / "semodule.log").read_text().splitlines()) == 1
    env_off, _ = _fake_node(tmp_path / "off", enabled=False)
    refused = subprocess.run(script, env=env_off, capture_output=True, text=True)
    assert refused.returncode == 1 and "SELinux is disabled" in refused.stderr


@pytest.fixture(scope="module")
def built_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not Path("/usr/share/selinux/devel/Makefile").exists() or not Path("/usr/libexec/selinux/hll/pp").exists():
        pytest.skip(f"the SELinux devel Makefile or the pp converter is not installed ({INSTALL_HINT})")
    out = tmp_path_factory.mktemp("module")
    subprocess.run(["bash", str(REPO / "selinux/build.sh"), str(out)], check=True, capture_output=True, timeout=300)
    return out / "wanrt.cil"


def test_port_labels_ship_in_the_module(built_module):
    cil = built_module.read_text(encoding="utf-8")
    for line in (REPO / "selinux/wanrt.ports").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            type_, proto, port = line.split()
            assert f"(portcon {proto} {port} (system_u object_r {type_} ((s0) (s0))))" in cil


def test_machineconfig_embeds_the_module_and_needs_no_semanage(built_module, tmp_path):
    yaml = pytest.importorskip("yaml")
    out = subprocess.run(["bash", str(K8S / "openshift/machineconfig.sh"), str(built_module), "gpu"],
                         capture_output=True, text=True, check=True).stdout
    config = yaml.safe_load(out)
    assert config["kind"] == "MachineConfig" and config["metadata"]["labels"] == {
        "machineconfiguration.openshift.io/role": "gpu"}
    (file,) = config["spec"]["config"]["storage"]["files"]
    embedded = base64.b64decode(file["contents"]["source"].split("base64,", 1)[1])
    assert embedded == built_module.read_bytes()
    assert file["contents"]["verification"]["hash"] == "sha256-" + hashlib.sha256(embedded).hexdigest()
    (unit,) = config["spec"]["config"]["systemd"]["units"]
    assert "ExecStart=/usr/sbin/semodule -X 400 -i /etc/wanrt/selinux/wanrt.cil" in unit["contents"]
    assert "semanage" not in unit["contents"]  # RHCOS has no semanage: the port labels come with the module
    refused = subprocess.run(["bash", str(K8S / "openshift/machineconfig.sh"), str(tmp_path / "absent.cil")],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "absent.cil" in refused.stderr
    no_ports = tmp_path / "old.cil"
    no_ports.write_text("(type wanrt_container_t)\n")
    refused = subprocess.run(["bash", str(K8S / "openshift/machineconfig.sh"), str(no_ports)],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "port labels" in refused.stderr


def test_nfs_volumes_get_the_policy_types_by_mount_context(tmp_path):
    """With components/nfs-storage, the claims bind to NFS volumes mounted with context=: the model store reads as
    wanrt_model_t and the audit log as wanrt_audit_t at the pod's level, never as nfs_t."""
    overlay = tmp_path / "nfs"
    overlay.mkdir()
    base = os.path.relpath(K8S / "overlays/gpu", overlay)
    component = os.path.relpath(K8S / "components/nfs-storage", overlay)
    (overlay / "kustomization.yaml").write_text(f"resources: [{base}]\ncomponents: [{component}]\n")
    yaml = pytest.importorskip("yaml")
    kubectl = require_tool("kubectl")
    out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    objects = [o for o in yaml.safe_load_all(out.stdout) if o]
    pod = _one(objects, "Deployment", "wanrt")["spec"]["template"]["spec"]
    level = pod["securityContext"]["seLinuxOptions"]["level"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    want = {"/models": ("wanrt_model_t", "s0"), "/var/log/wanrt": ("wanrt_audit_t", level)}
    for volume in pod["volumes"]:
        if "persistentVolumeClaim" not in volume:
            continue
        claim = _one(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        pv = _one(objects, "PersistentVolume", claim["spec"]["volumeName"])
        assert pv["spec"]["claimRef"] == {"namespace": "wanrt", "name": claim["metadata"]["name"]}
        assert "nfs" in pv["spec"] and claim["spec"]["storageClassName"] == pv["spec"]["storageClassName"] == ""
        type_, want_level = want[mounts[volume["name"]]["mountPath"]]
        options = pv["spec"]["mountOptions"]
        assert f'context="system_u:object_r:{type_}:{want_level}"' in options
        assert {"noexec", "nosuid", "nodev"} <= set(options)

#!/usr/bin/python3
"""Assert the wanrt SELinux security goals against a linked binary policy (offline, setools).

The same table is checked on two policies: Debian's refpolicy with its container module (CI), and RHEL 10 /
CentOS Stream 10 targeted policy with container-selinux's own container module, both built from their sources
(deploy/ci/check-selinux-rhel.sh; recorded in selinux/README.md).

Runs under Debian's /usr/bin/python3 (python3-setools); the project venv cannot import setools.

    /usr/bin/python3 deploy/ci/selinux_goals.py POLICY [--file-contexts FILE] [--json OUT]

Exit status: 0 all goals hold, 1 at least one goal fails, 2 the checker could not run (missing
setools, unreadable policy, a goal naming a type the policy lacks).

Two evaluation modes:
  * "default": conditional rules count only when enabled with the policy's default booleans
    (what the domain gets on a freshly installed host);
  * "any": every conditional rule counts, whatever its boolean (what an administrator could
    switch on). Every MUST NOT goal uses "any", so a boolean cannot quietly reopen a hole.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field

DOMAIN = "wanrt_container_t"
# One port type per listener (selinux/wanrt.ports): gRPC, metrics, plaintext health for kubelet's probes, and
# the OpenAI-compatible HTTP API.
PORTS = [("tcp", 50051, "wanrt_grpc_port_t"), ("tcp", 9464, "wanrt_metrics_port_t"),
         ("tcp", 50060, "wanrt_health_port_t"), ("tcp", 50080, "wanrt_http_port_t")]
PORT_TYPES = [t for _p, _n, t in PORTS]

FILE_CLASSES = ["file", "dir", "lnk_file", "chr_file", "blk_file", "sock_file", "fifo_file"]
WRITE_PERMS = [
    "write", "append", "create", "unlink", "rename", "link", "setattr", "add_name", "remove_name",
    "reparent", "rmdir", "relabelfrom", "relabelto", "mounton",
]
EXEC_PERMS = ["execute", "execute_no_trans", "entrypoint", "execmod"]
READ_PERMS = ["read", "open", "map", "ioctl", "lock", "watch"]
DEV_PERMS = ["read", "write", "append", "ioctl", "map", "open", "lock"]

DANGEROUS_CAPS = [
    "sys_admin", "sys_module", "net_admin", "net_raw", "sys_ptrace", "sys_rawio", "sys_time", "mknod",
    "mac_admin", "mac_override", "audit_control", "setfcap", "linux_immutable", "sys_resource",
    "dac_read_search", "ipc_lock", "sys_pacct", "sys_tty_config", "lease", "ipc_owner",
]
DANGEROUS_CAPS2 = ["mac_admin", "mac_override", "syslog", "bpf", "perfmon", "checkpoint_restore",
                   "wake_alarm", "audit_read", "block_suspend"]
# Types the domain may write files in (any boolean): outputs, the audit log (append), scratch. Not the image's
# container_file_t, which it executes.
# And its own /proc/<pid> entries (the process's own type, no storage): the platform's `allow domain self:file`
# reaches the goals expanded, with the domain itself as source.
WRITE_ALLOWED = ["wanrt_output_t", "wanrt_audit_t", "wanrt_tmp_t", DOMAIN]
# What the platform grants EVERY process type: rules whose source is the policy-wide `domain` attribute, or a
# set attribute the compiler made from it (CIL's "<module>_typeattr_N", e.g. `domain -{ some_t }`). No module can
# subtract them and they are the same for every confined service on that OS (RHEL 10: read abrt_t's /proc
# entries, append to inherited temporary files, mmap under domain_can_mmap_files ...; refpolicy: /dev/zero, the
# controlling tty). The goals judge what is above that floor: the wanrt module's own rules and every other
# attribute the domain holds (S6 pins that list, so no attribute can bring rules in unseen). The floor is
# counted and printed, and listed by --floor.
PLATFORM_ATTRS = ["domain"]
DEVICES_ALLOWED = ["xserver_misc_device_t", "null_device_t", "urandom_device_t", "random_device_t", "container_file_t"]
# Attributes the domain may hold: the platform's, and MCS constraint (S6).
DOMAIN_ATTRS = ["domain", "mcs_constrained_type", "mlsrangetrans"]
# The only socket classes the domain may use: TCP (its own ports, N4/N5) and unix sockets.
SOCKETS_ALLOWED = ["tcp_socket", "unix_stream_socket", "unix_dgram_socket"]
# The runtimes' attributes: container-selinux (RHEL) and refpolicy (Debian); each policy has one of them.
ENGINE_ATTRS = ["container_runtime_domain", "container_engine_domain"]
SENSITIVE_READ = [
    "shadow_t", "user_home_t", "user_home_dir_t", "xdg_data_t", "xdg_config_t", "ssh_home_t", "gpg_secret_t",
    "krb5_keytab_t", "proc_kcore_t", "memory_device_t", "kmsg_device_t", "auditd_log_t", "var_log_t", "cert_t",
]


@dataclass
class Goal:
    gid: str
    text: str
    kind: str
    args: dict = field(default_factory=dict)


GOALS: list[Goal] = [
    # ---- structure ----------------------------------------------------------------------
    Goal("S1", "domain is no container_domain (nothing inherited), MCS-constrained, not net/privileged/unconfined",
         "attrs", {"type": DOMAIN, "has": ["domain", "mcs_constrained_type"],
                   "lacks": ["container_domain", "container_net_domain", "privileged_container_domain",
                             "unconfined_domain_type", "container_engine_domain", "container_runtime_domain",
                             "can_load_kernmodule", "can_load_policy", "can_setenforce",
                             "can_write_shadow_passwords", "kern_unconfined", "sysctl_type"]}),
    Goal("S2", "domain is not permissive", "not_permissive", {"type": DOMAIN}),
    Goal("S6", "the domain holds no attribute but the platform's (domain, set attributes) and MCS", "attrs_only",
         {"type": DOMAIN, "allowed": DOMAIN_ATTRS}),
    Goal("S3", "content and port types are file/port types", "attrs_each",
         {"types": {"wanrt_model_t": ["file_type"], "wanrt_output_t": ["file_type"],
                    "wanrt_secret_t": ["file_type"], "wanrt_audit_t": ["file_type", "logfile"],
                    "wanrt_tmp_t": ["file_type"],
                    **{t: ["port_type"] for t in PORT_TYPES}}}),
    Goal("S4", "a container engine can enter the domain under no-new-privileges", "enter",
         {"engine_attrs": ENGINE_ATTRS}),
    Goal("S5", "image content (container_file_t) is the entrypoint", "may",
         {"targets": ["container_file_t"], "classes": ["file"], "perms": ["entrypoint", "execute", "read"]}),
    # ---- MAY ------------------------------------------------------------------------------
    Goal("M1", "read + mmap model/engine files (wanrt_model_t)", "may",
         {"targets": ["wanrt_model_t"], "classes": ["file"], "perms": ["open", "read", "getattr", "map"]}),
    Goal("M2", "list model/engine directories, follow their symlinks", "may_each",
         {"targets": ["wanrt_model_t"], "perms": {"dir": ["search", "read", "open", "getattr"],
                                                  "lnk_file": ["read"]}}),
    Goal("M3", "create/write/rename outputs (wanrt_output_t)", "may_each",
         {"targets": ["wanrt_output_t"],
          "perms": {"file": ["create", "open", "write", "append", "rename", "unlink", "getattr"],
                    "dir": ["search", "add_name", "remove_name", "write", "create"]}}),
    Goal("A1", "create the audit log and append to it (wanrt_audit_t)", "may_each",
         {"targets": ["wanrt_audit_t"],
          "perms": {"file": ["create", "open", "append", "read", "getattr"], "dir": ["search", "add_name"]}}),
    Goal("M4", "read TLS material and tokens (wanrt_secret_t)", "may",
         {"targets": ["wanrt_secret_t"], "classes": ["file"], "perms": ["open", "read"]}),
    Goal("M5", "listen on the gRPC, metrics, health and HTTP port types (tcp socket, node_bind, name_bind)", "may_each",
         {"targets": None, "perms": {}, "pairs": [
             (DOMAIN, "tcp_socket", ["create", "bind", "listen", "accept", "read", "write"]),
             *[(t, "tcp_socket", ["name_bind"]) for t in PORT_TYPES],
             ("node_t", "tcp_socket", ["node_bind"])]}),
    Goal("M6", "use the NVIDIA device nodes (xserver_misc_device_t: rw, ioctl, map)", "may",
         {"targets": ["xserver_misc_device_t"], "classes": ["chr_file"],
          "perms": ["open", "read", "write", "ioctl", "map", "getattr"]}),
    Goal("M7", "tcp 50051, 9464, 50060 and 50080 carry their own port types", "portcon", {"ports": PORTS}),
    Goal("M8", "health over its own unix socket (the HEALTHCHECK needs no TCP connect)", "may_each",
         {"targets": None, "perms": {}, "pairs": [
             (DOMAIN, "unix_stream_socket", ["create", "bind", "listen", "accept", "connect", "connectto"]),
             ("container_file_t", "sock_file", ["create", "write", "unlink"])]}),
    Goal("M9", "scratch: what it creates in container_file_t directories is wanrt_tmp_t, which it manages",
         "may_each", {"targets": ["wanrt_tmp_t"],
                      "perms": {"file": ["create", "open", "write", "read", "unlink", "rename"],
                                "dir": ["create", "add_name", "remove_name", "rmdir"]},
                      "transitions": [("container_file_t", "file", "wanrt_tmp_t"),
                                      ("container_file_t", "dir", "wanrt_tmp_t")]}),
    Goal("C1", "the confinement canary is denied and silent: no name_connect, a dontaudit on the gRPC port",
         "dontaudit", {"target": "wanrt_grpc_port_t", "class": "tcp_socket", "perm": "name_connect"}),
    # ---- MUST NOT -------------------------------------------------------------------------
    Goal("N1", "no write/create/relabel/mounton on models (wanrt_model_t)", "must_not",
         {"targets": ["wanrt_model_t"], "classes": FILE_CLASSES, "perms": WRITE_PERMS}),
    Goal("N2", "no write on secrets (wanrt_secret_t)", "must_not",
         {"targets": ["wanrt_secret_t"], "classes": FILE_CLASSES, "perms": WRITE_PERMS}),
    Goal("N3", "nothing executable from models, outputs, scratch, the audit log or secrets", "must_not",
         {"targets": ["wanrt_model_t", "wanrt_output_t", "wanrt_tmp_t", "wanrt_audit_t", "wanrt_secret_t"],
          "classes": ["file"],
          "perms": EXEC_PERMS}),
    Goal("A2", "audit log: no write at an offset, truncate, rename, unlink, link or relabel (wanrt_audit_t)",
         "must_not", {"targets": ["wanrt_audit_t"], "classes": ["file"],
                      "perms": ["write", "setattr", "rename", "unlink", "link", "relabelfrom", "relabelto",
                                "mounton"]}),
    Goal("A3", "audit directory: no entry removed or renamed, directory kept (wanrt_audit_t)", "must_not",
         {"targets": ["wanrt_audit_t"], "classes": ["dir"],
          "perms": ["remove_name", "reparent", "rename", "rmdir", "unlink", "setattr", "relabelfrom", "mounton"]}),
    Goal("A4", "audit directory holds only files the domain appends to (no links, fifos, sockets)", "must_not",
         {"targets": ["wanrt_audit_t"], "classes": ["lnk_file", "chr_file", "blk_file", "sock_file", "fifo_file"],
          "perms": WRITE_PERMS}),
    Goal("N4", "no name_connect to any port, under any boolean", "must_not",
         {"targets": "*", "classes": ["tcp_socket", "sctp_socket", "dccp_socket"], "perms": ["name_connect"]}),
    Goal("N5", "no name_bind on any port type but the wanrt port types (tcp, udp, sctp)", "must_not",
         {"targets": "*", "classes": ["tcp_socket", "udp_socket", "sctp_socket", "dccp_socket"],
          "perms": ["name_bind"], "except_targets": PORT_TYPES}),
    Goal("N6", "no dangerous capabilities (sys_admin, sys_module, net_admin, sys_ptrace ...)", "must_not",
         {"targets": [DOMAIN], "classes": ["capability"], "perms": DANGEROUS_CAPS}),
    Goal("N6u", "no dangerous capabilities in a child user namespace either", "must_not",
         {"targets": [DOMAIN], "classes": ["cap_userns"],
          "perms": DANGEROUS_CAPS}),
    Goal("N7", "no capability2 privileges (bpf, perfmon, mac_*, syslog ...)", "must_not",
         {"targets": [DOMAIN], "classes": ["capability2", "cap2_userns"], "perms": DANGEROUS_CAPS2}),
    Goal("N8", "no capability at all, in any user namespace, under any boolean", "must_not",
         {"targets": [DOMAIN], "classes": ["capability", "cap_userns", "capability2", "cap2_userns"], "perms": "*"}),
    Goal("N9", "no ptrace of any process, no domain transition out, no setexec/setcurrent", "must_not",
         {"targets": "*", "classes": ["process"],
          "perms": ["ptrace", "transition", "dyntransition", "setexec", "setcurrent"]}),
    Goal("N10", "no disk, memory or other device nodes (fixed_disk, kmem, ...)", "must_not",
         {"targets": "device_node", "classes": ["chr_file", "blk_file"], "perms": DEV_PERMS,
          "except_targets": DEVICES_ALLOWED, "mode": "any"}),
    Goal("N11", "no access to disks (fixed, removable, SCSI generic), even under a boolean", "must_not",
         {"targets": ["fixed_disk_device_t", "removable_device_t", "scsi_generic_device_t"],
          "classes": ["blk_file", "chr_file"], "perms": DEV_PERMS}),
    Goal("N12", "no read of shadow, home directories, keytabs, kcore, kmem, host logs, host certs", "must_not",
         {"targets": SENSITIVE_READ, "classes": ["file", "chr_file", "lnk_file"], "perms": READ_PERMS,
          "optional": True}),
    Goal("N13", "file writes only to wanrt_output_t, wanrt_tmp_t and wanrt_audit_t (append), under any boolean",
         "only", {"classes": ["file"], "perms": ["write", "append", "create"], "targets": "*",
                  "target_allow": WRITE_ALLOWED, "mode": "any"}),
    Goal("N14", "no policy/kernel control (load_policy, setenforce, setbool, module load)", "must_not",
         {"targets": "*", "classes": ["security", "system"],
          "perms": ["load_policy", "setenforce", "setbool", "setsecparam", "module_load", "module_request",
                    "syslog_mod", "syslog_console", "reboot", "halt"]}),
    Goal("N15", "no raw/packet/netlink-write sockets", "must_not",
         {"targets": [DOMAIN], "classes": ["rawip_socket", "packet_socket", "tun_socket", "icmp_socket",
                                            "netlink_socket", "netlink_tcpdiag_socket",
                                            "netlink_kobject_uevent_socket"],
          "perms": ["create"]}),
    Goal("N16", "no routing-table changes (netlink_route nlmsg_write)", "must_not",
         {"targets": [DOMAIN], "classes": ["netlink_route_socket"], "perms": ["nlmsg_write"]}),
    Goal("W1", "no type both writable and executable (never executes what it can write)", "write_xor_exec", {}),
    Goal("X1", "no execmem, execstack, execheap, nor execmod on any file", "must_not_each",
         {"pairs": [([DOMAIN], "process", ["execmem", "execstack", "execheap"], []),
                    ("*", "file", ["execmod"], [])]}),
    Goal("X2", "no socket class but TCP and unix sockets (no udp, raw, packet, netlink, sctp, vsock ...)",
         "sockets_only", {"allowed": SOCKETS_ALLOWED}),
    Goal("X3", "no read or search of other processes' /proc entries (any domain but its own)", "must_not",
         {"targets": "domain", "classes": ["file", "dir", "lnk_file"], "perms": ["read", "open", "search"],
          "except_targets": [DOMAIN]}),
]


def _conditional(rule: object) -> object | None:
    """The rule's boolean expression, or None (setools raises RuleNotConditional instead)."""
    try:
        return rule.conditional
    except Exception:  # noqa: BLE001 - setools.exception.RuleNotConditional
        return None


def _is_platform(source: str) -> bool:
    return source in PLATFORM_ATTRS or re.fullmatch(r"\w+_typeattr_\d+", source) is not None


class GoalError(Exception):
    """A goal names something the policy lacks: a broken goal table, not a failed goal."""


class Checker:
    def __init__(self, policy_path: str, file_contexts: str | None = None) -> None:
        import setools  # Debian python3-setools

        self.setools = setools
        self.p = setools.SELinuxPolicy(policy_path)
        self.file_contexts = file_contexts
        try:
            self.p.lookup_type(DOMAIN)
        except Exception as exc:  # noqa: BLE001 - setools raises its own InvalidType
            raise GoalError(f"{DOMAIN} is not in the policy: was the wanrt module linked?") from exc
        self.classes = {str(c) for c in self.p.classes()}
        # (target type, class) -> perm -> list of grants; a grant is None (unconditional) or
        # (boolean expression text, enabled with default booleans?)
        self.access: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: defaultdict(list))
        self.floor: list[str] = []  # the platform's rules for every process type (PLATFORM_ATTRS)
        for rule in setools.TERuleQuery(self.p, ruletype=["allow"], source=DOMAIN,
                                        source_indirect=True).results():
            if _is_platform(str(rule.source)):
                self.floor.append(str(rule))
                continue
            cls = str(rule.tclass)
            cond = _conditional(rule)
            if cond is None:
                grant = None
            else:
                grant = (str(cond), {str(b) for b in cond.booleans}, rule.enabled())
            for tgt in rule.target.expand():
                for perm in rule.perms:
                    self.access[(str(tgt), cls)][str(perm)].append(grant)

    # -- helpers ------------------------------------------------------------------------
    def _types(self, spec: object, optional: bool = False) -> list[str]:
        """'*' -> every type; a name -> the type, or the members of the attribute.

        A missing name is an error (a typo must not pass silently) unless the goal marks its list optional
        (types that only some policies have, e.g. refpolicy's xdg_data_t is data_home_t on RHEL)."""
        if spec == "*":
            return sorted({t for (t, _c) in self.access})
        names = [spec] if isinstance(spec, str) else list(spec)
        out: list[str] = []
        for name in names:
            try:
                obj = self.p.lookup_type_or_attr(name)
            except Exception as exc:  # noqa: BLE001
                if optional:
                    continue
                raise GoalError(f"type or attribute {name!r} is not in the policy") from exc
            out.extend(str(t) for t in obj.expand())
        return sorted(set(out))

    def _classes(self, classes: list[str]) -> list[str]:
        # sctp/dccp/cap2_userns may be missing from an older policy: skip classes it lacks.
        return [c for c in classes if c in self.classes]

    def granted(self, tgt: str, cls: str, perm: str, mode: str = "default") -> list:
        grants = self.access.get((tgt, cls), {}).get(perm, [])
        if mode == "any":
            return grants
        return [g for g in grants if g is None or g[2]]

    @staticmethod
    def _fmt(tgt: str, cls: str, perm: str, grants: list) -> str:
        conds = sorted({"unconditional" if g is None else f"if {g[0]}" for g in grants})
        return f"{tgt}:{cls} {perm} ({', '.join(conds)})"

    # -- goal kinds ---------------------------------------------------------------------
    def k_attrs(self, a: dict) -> list[str]:
        t = self.p.lookup_type(a["type"])
        attrs = {str(x) for x in t.attributes()}
        problems = [f"missing attribute {x}" for x in a["has"] if x not in attrs]
        problems += [f"has attribute {x}" for x in a["lacks"] if x in attrs]
        return problems

    def k_attrs_each(self, a: dict) -> list[str]:
        problems = []
        for name, want in a["types"].items():
            try:
                t = self.p.lookup_type(name)
            except Exception as exc:  # noqa: BLE001
                raise GoalError(f"type {name} is not in the policy") from exc
            attrs = {str(x) for x in t.attributes()}
            problems += [f"{name} lacks attribute {x}" for x in want if x not in attrs]
        return problems

    def k_attrs_only(self, a: dict) -> list[str]:
        attrs = {str(x) for x in self.p.lookup_type(a["type"]).attributes()}
        return [f"has attribute {x}" for x in sorted(attrs) if x not in a["allowed"] and not _is_platform(x)]

    def k_not_permissive(self, a: dict) -> list[str]:
        return [f"{a['type']} is permissive"] if self.p.lookup_type(a["type"]).ispermissive else []

    def k_enter(self, a: dict) -> list[str]:
        engines = set().union(*(self._types(name, optional=True) for name in a["engine_attrs"]))
        if not engines:
            raise GoalError(f"none of {a['engine_attrs']} is in the policy: was a container module linked?")
        st = self.setools

        def sources(cls: str, perm: str) -> set[str]:
            q = st.TERuleQuery(self.p, ruletype=["allow"], target=DOMAIN, target_indirect=True,
                               tclass=[cls], perms=[perm])
            out: set[str] = set()
            for r in q.results():
                if _conditional(r) is None or r.enabled():
                    out.update(str(t) for t in r.source.expand())
            return out

        ok = engines & sources("process", "transition") & sources("process2", "nnp_transition")
        return [] if ok else [f"no type in {a['engine_attrs']} has process transition + process2 nnp_transition"]

    def k_dontaudit(self, a: dict) -> list[str]:
        problems = [self._fmt(a["target"], a["class"], a["perm"], g)
                    for g in [self.granted(a["target"], a["class"], a["perm"], "any")] if g]
        q = self.setools.TERuleQuery(self.p, ruletype=["dontaudit"], source=DOMAIN, source_indirect=True,
                                     target=a["target"], tclass=[a["class"]], perms=[a["perm"]])
        if not any(True for _ in q.results()):
            problems.append(f"no dontaudit {a['target']}:{a['class']} {a['perm']}: the canary would log a denial")
        return problems

    def k_must_not_each(self, a: dict) -> list[str]:
        problems = []
        for targets, cls, perms, excepted in a["pairs"]:
            problems += self.k_must_not({"targets": targets, "classes": [cls], "perms": perms,
                                         "except_targets": excepted, "optional": True})
        return problems

    def k_write_xor_exec(self, _a: dict) -> list[str]:
        problems = []
        for tgt in self._types("*"):
            writes = [p for p in ("write", "append", "create") if self.granted(tgt, "file", p, "any")]
            runs = [p for p in ("execute", "execute_no_trans", "entrypoint", "execmod")
                    if self.granted(tgt, "file", p, "any")]
            if writes and runs:
                problems.append(f"{tgt}:file {'/'.join(writes)} and {'/'.join(runs)}")
        return problems

    def k_sockets_only(self, a: dict) -> list[str]:
        problems = []
        for (tgt, cls), perms in sorted(self.access.items()):
            if not (cls.endswith("_socket") or cls == "socket") or cls in a["allowed"]:
                continue
            for perm, grants in sorted(perms.items()):
                problems.append(self._fmt(tgt, cls, perm, grants))
        return problems

    def k_may(self, a: dict) -> list[str]:
        problems = []
        for tgt in self._types(a["targets"]):
            for cls in a["classes"]:
                problems += [f"{tgt}:{cls} {p} not granted" for p in a["perms"] if not self.granted(tgt, cls, p)]
        return problems

    def k_may_each(self, a: dict) -> list[str]:
        pairs = list(a.get("pairs", []))
        if a.get("targets"):
            for tgt in self._types(a["targets"]):
                pairs += [(tgt, cls, perms) for cls, perms in a["perms"].items()]
        problems = []
        for tgt, cls, perms in pairs:
            self._types(tgt)  # existence check
            problems += [f"{tgt}:{cls} {p} not granted" for p in perms if not self.granted(tgt, cls, p)]
        for parent, cls, new in a.get("transitions", []):
            q = self.setools.TERuleQuery(self.p, ruletype=["type_transition"], source=DOMAIN, target=parent,
                                         tclass=[cls])
            if not any(str(r.default) == new for r in q.results()):
                problems.append(f"no type_transition {DOMAIN} {parent}:{cls} {new}")
        return problems

    def k_must_not(self, a: dict) -> list[str]:
        mode = a.get("mode", "any")
        excepted = set(self._types(a["except_targets"], optional=True)) if a.get("except_targets") else set()
        targets = self._types(a["targets"], optional=a.get("optional", False))
        problems = []
        for tgt in targets:
            if tgt in excepted:
                continue
            for cls in self._classes(a["classes"]):
                perms = sorted(self.access.get((tgt, cls), {})) if a["perms"] == "*" else a["perms"]
                for perm in perms:
                    grants = self.granted(tgt, cls, perm, mode)
                    if grants:
                        problems.append(self._fmt(tgt, cls, perm, grants))
        return problems

    def k_only(self, a: dict) -> list[str]:
        mode = a.get("mode", "default")
        allowed_t = set(self._types(a["target_allow"])) if a.get("target_allow") else None
        allowed_p = set(a["perm_allow"]) if a.get("perm_allow") else None
        targets = self._types(a["targets"]) if a["targets"] != "*" else self._types("*")
        problems = []
        for tgt in targets:
            for cls in self._classes(a["classes"]):
                perms = self.access.get((tgt, cls), {})
                for perm in sorted(perms):
                    if a["perms"] != "*" and perm not in a["perms"]:
                        continue
                    grants = self.granted(tgt, cls, perm, mode)
                    if not grants:
                        continue
                    if allowed_t is not None and tgt not in allowed_t:
                        problems.append(self._fmt(tgt, cls, perm, grants))
                    elif allowed_p is not None and perm not in allowed_p:
                        problems.append(self._fmt(tgt, cls, perm, grants))
        return problems

    def k_portcon(self, a: dict) -> list[str]:
        problems = []
        for proto, port, want in a["ports"]:
            best = None
            for pc in self.p.portcons():
                if pc.protocol.name != proto or not (pc.ports.low <= port <= pc.ports.high):
                    continue
                width = pc.ports.high - pc.ports.low
                if best is None or width < best[0]:
                    best = (width, str(pc.context.type_))
            got = best[1] if best else "unlabelled"
            if got != want:
                problems.append(f"{proto}/{port} is {got}, want {want}")
        return problems

    # -- driver -------------------------------------------------------------------------
    def run(self) -> list[dict]:
        results = []
        for goal in GOALS:
            problems = getattr(self, f"k_{goal.kind}")(goal.args)
            results.append({"id": goal.gid, "goal": goal.text, "ok": not problems, "problems": problems})
        return results


def fcontext_results(file_contexts: str) -> list[dict]:
    """F goals: the host paths of docker-compose.yml get their types (matchpathcon)."""
    want = {
        "/srv/wanrt/models/wan2.2/transformer.engine": "wanrt_model_t",
        "/var/lib/wanrt/outputs/0001.mp4": "wanrt_output_t",
        "/var/log/wanrt/audit.jsonl": "wanrt_audit_t",
        "/var/lib/wanrt/scratch/.cache/wanrt/memory.npz": "wanrt_tmp_t",
        "/etc/wanrt/secrets/tls.key": "wanrt_secret_t",
        "/dev/nvidia0": "xserver_misc_device_t",
        "/dev/nvidiactl": "xserver_misc_device_t",
        "/dev/nvidia-uvm": "xserver_misc_device_t",
    }
    tool = shutil.which("matchpathcon") or "/usr/sbin/matchpathcon"
    problems = []
    for path, typ in want.items():
        proc = subprocess.run([tool, "-f", file_contexts, path], capture_output=True, text=True, check=False)
        got = proc.stdout.split()[-1].split(":")[2] if proc.returncode == 0 and proc.stdout.split() else "?"
        if got != typ:
            problems.append(f"{path} -> {got}, want {typ} ({proc.stderr.strip()})")
    return [{"id": "F1", "goal": "host paths and /dev/nvidia* get the intended file contexts",
             "ok": not problems, "problems": problems}]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy", help="binary policy (policy.33) with the wanrt module linked in")
    ap.add_argument("--file-contexts", help="file_contexts of the same store (enables the F goals)")
    ap.add_argument("--json", help="write the results here as JSON")
    ap.add_argument("--floor", action="store_true",
                    help="also list the platform's rules for every process type (not judged by the goals)")
    args = ap.parse_args(argv)
    try:
        checker = Checker(args.policy)
        results = checker.run()
        if args.file_contexts:
            results += fcontext_results(args.file_contexts)
    except ImportError as exc:
        print(f"selinux_goals: cannot import setools ({exc}); install Debian's python3-setools", file=sys.stderr)
        return 2
    except GoalError as exc:
        print(f"selinux_goals: {exc}", file=sys.stderr)
        return 2
    width = max(len(r["goal"]) for r in results)
    for r in results:
        print(f"{r['id']:<4} {'PASS' if r['ok'] else 'FAIL'}  {r['goal']:<{width}}")
        for prob in r["problems"][:20]:
            print(f"        - {prob}")
        if len(r["problems"]) > 20:
            print(f"        ... {len(r['problems']) - 20} more")
    hint = "" if args.floor else " (--floor lists them)"
    print(f"platform floor: {len(checker.floor)} rules the policy grants every process type (attribute "
          f"{'/'.join(PLATFORM_ATTRS)} and its set attributes), outside the goals{hint}")
    if args.floor:
        print("\n".join(f"    {rule}" for rule in sorted(checker.floor)))
    failed = [r["id"] for r in results if not r["ok"]]
    if failed:
        print(f"selinux goals: {len(failed)} of {len(results)} FAILED: {', '.join(failed)}")
    else:
        print(f"selinux goals: all {len(results)} hold")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

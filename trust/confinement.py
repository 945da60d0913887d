"""Confinement self-check: `wanrt serve --require-selinux-type TYPE` refuses to start outside that SELinux type.

A container meant to run as wanrt_container_t can silently run unconfined: Docker CE without
``"selinux-enabled": true`` in daemon.json starts every container unlabelled, podman-compose adds
``label=disable`` when it maps a GPU (spc_t), and a host in permissive mode logs denials but enforces nothing.
The kernel tells the process its own context in /proc/self/attr/current; this module reads it at start.
"""

from __future__ import annotations

from pathlib import Path

from wanrt.errors import ConfinementError

ATTR_CURRENT = Path("/proc/self/attr/current")
SELINUXFS = Path("/sys/fs/selinux")

# Types a mis-started container typically gets, and why.
_LIKELY_CAUSE = {
    "spc_t": "the container runs with label=disable or --privileged (podman-compose adds label=disable when it "
             "maps a GPU; use `podman compose` with the Docker-compatible socket, or docker compose)",
    "unconfined_t": "the process was not started by a container engine that labels it (or with label=disable)",
    "container_t": "the engine ignored the compose file's label=type:wanrt_container_t (is the wanrt policy "
                   "module loaded? `semodule -l | grep wanrt`)",
    "container_runtime_t": "the engine's own domain: the container was started without an SELinux label",
    "kernel_t": "SELinux labels are not applied to this process",
}


def current_type(attr_current: Path = ATTR_CURRENT) -> str | None:
    """The SELinux type of this process, or None when SELinux is off (no readable context)."""
    try:
        context = Path(attr_current).read_bytes().rstrip(b"\0\n").decode("ascii", "replace")
    except OSError:  # EINVAL when SELinux is disabled, ENOENT without procfs attrs
        return None
    parts = context.split(":")
    return parts[2] if len(parts) >= 3 else None


def enforcing(selinuxfs: Path = SELINUXFS) -> bool | None:
    """True/False from selinuxfs' enforce flag; None when selinuxfs is not mounted (SELinux off)."""
    try:
        return Path(selinuxfs, "enforce").read_text(encoding="ascii").strip() == "1"
    except OSError:
        return None


def require_selinux_type(expected: str, *, attr_current: Path = ATTR_CURRENT, selinuxfs: Path = SELINUXFS) -> str:
    """Returns the process's context type when it is ``expected`` and enforced; ConfinementError saying what was
    found and its likely cause otherwise."""
    found = current_type(attr_current)
    mode = enforcing(selinuxfs)
    if found is None or mode is None:
        raise ConfinementError(
            f"--require-selinux-type {expected}: SELinux is off for this process ({attr_current} gives no context"
            f"{'' if mode is not None else f', {selinuxfs} is not mounted'}). Likely cause: the host runs without "
            "SELinux, or Docker CE without \"selinux-enabled\": true in /etc/docker/daemon.json")
    if found != expected:
        cause = _LIKELY_CAUSE.get(found, "the engine started the container with another label")
        raise ConfinementError(f"--require-selinux-type {expected}: this process runs as {found}. Likely cause: "
                               f"{cause}")
    if not mode:
        raise ConfinementError(f"--require-selinux-type {expected}: the type is right but SELinux is permissive "
                               f"({selinuxfs}/enforce is 0): denials are logged, nothing is confined")
    return found

"""Confinement self-check: `wanrt serve --require-selinux-type TYPE` refuses to start unless the kernel really
confines this process as TYPE.

A container meant to run as wanrt_container_t can silently run unconfined: Docker CE without
``"selinux-enabled": true`` in daemon.json starts every container unlabelled, podman-compose adds
``label=disable`` when it maps a GPU (spc_t), a host in permissive mode logs denials but enforces nothing, and
``semanage permissive -a wanrt_container_t`` makes this one domain permissive while the host stays enforcing.

What a confined process can see of its own confinement, from the inside:

1. its context, from procfs (``/proc/self/attr/selinux/current``, or ``/proc/self/attr/current`` on kernels
   without per-LSM attribute directories). Readable in every container; unreadable (EINVAL) when the kernel
   runs without SELinux. It names the type, not whether the type is enforced.
2. a canary: an operation the wanrt policy must deny, tried for real. The domain holds no ``name_connect``
   at all (goal N4 of selinux/README.md), so a TCP ``connect()`` to 127.0.0.1 on the gRPC port fails with
   EACCES in the SELinux hook, before routing or any listener is consulted. Permissive (host-wide or for this
   domain only) lets it through: it then fails with ECONNREFUSED (nothing listens yet) or connects. The
   policy ``dontaudit``s this one denial, so the canary leaves no AVC record on every start.
3. selinuxfs' ``enforce`` when it is visible. Podman masks ``/sys/fs/selinux`` and other runtimes do not mount
   it: its absence proves nothing, so it is used to name a permissive host precisely, never required.

EACCES is also what Landlock returns for a denied connect; on a host where both could apply, the context
check (1) still requires the SELinux type, and selinuxfs (3) tells the mode when mounted.
"""

from __future__ import annotations

import dataclasses
import errno
import socket
from collections.abc import Callable
from pathlib import Path

from wanrt.errors import ConfinementError

# Per-LSM attribute (Linux 5.x+ with stacking) first: on an AppArmor host /proc/self/attr/current is AppArmor's.
ATTR_CURRENT = (Path("/proc/self/attr/selinux/current"), Path("/proc/self/attr/current"))
SELINUXFS = Path("/sys/fs/selinux")
# The canary's target: the gRPC port, labelled wanrt_grpc_port_t by the wanrt module, on which the domain has
# no name_connect (and a dontaudit, so the expected denial is silent).
CANARY_ADDRESS = ("127.0.0.1", 50051)

# Types a mis-started container typically gets, and why.
_LIKELY_CAUSE = {
    "spc_t": "the container runs with label=disable or --privileged (podman-compose adds label=disable when it "
             "maps a GPU; use `podman compose` with deploy/podman/compose.gpu-cdi.yml, or docker compose)",
    "unconfined_t": "the process was not started by a container engine that labels it (or with label=disable)",
    "container_t": "the engine ignored the label=type:wanrt_container_t option (is the wanrt policy module "
                   "loaded? `semodule -l | grep wanrt`)",
    "container_runtime_t": "the engine's own domain: Docker runs without \"selinux-enabled\": true in "
                           "/etc/docker/daemon.json, so its containers are not labelled",
    "kernel_t": "SELinux labels are not applied to this process",
}


@dataclasses.dataclass(frozen=True)
class Confinement:
    """What the process found out about its own confinement."""

    context: str | None  # full SELinux context; None when the kernel gives none
    type: str | None
    enforce: bool | None  # selinuxfs' enforce flag; None when selinuxfs is not visible
    canary_errno: int | None  # errno of the canary connect; None when it connected

    @property
    def canary_denied(self) -> bool:
        return self.canary_errno == errno.EACCES

    def describe(self) -> str:
        mode = {True: "enforcing", False: "permissive", None: "not visible (masked or not mounted)"}[self.enforce]
        return (f"context {self.context or 'none'}; selinuxfs {mode}; canary name_connect "
                f"{CANARY_ADDRESS[0]}:{CANARY_ADDRESS[1]} {_outcome(self.canary_errno)}")


def _outcome(code: int | None) -> str:
    if code is None:
        return "connected"
    return f"failed with {errno.errorcode.get(code, str(code))}" + (" (denied)" if code == errno.EACCES else "")


def current_context(attr_current: Path | tuple[Path, ...] = ATTR_CURRENT) -> str | None:
    """This process's SELinux context, or None when the kernel gives none (SELinux disabled or not built in).

    A value that is not an SELinux context (AppArmor's "unconfined", "profile (enforce)") counts as none."""
    for path in (attr_current,) if isinstance(attr_current, Path) else attr_current:
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            continue  # no per-LSM directory on this kernel: try the shared attribute
        except OSError:
            return None  # EINVAL: SELinux is disabled in this kernel
        context = raw.rstrip(b"\0\n").decode("ascii", "replace")
        return context if len(context.split(":")) >= 3 and " " not in context else None
    return None


def enforcing(selinuxfs: Path = SELINUXFS) -> bool | None:
    """True/False from selinuxfs' enforce flag; None when selinuxfs is not visible (masked, not mounted, off)."""
    try:
        return Path(selinuxfs, "enforce").read_text(encoding="ascii").strip() == "1"
    except OSError:
        return None


def connect_canary(address: tuple[str, int] = CANARY_ADDRESS, timeout: float = 2.0) -> int | None:
    """Tries the connect the policy must deny; returns its errno, or None when it connected (then closes)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        return None
    except TimeoutError:
        return errno.ETIMEDOUT
    except OSError as err:
        return err.errno
    finally:
        sock.close()


def inspect(*, attr_current: Path | tuple[Path, ...] = ATTR_CURRENT, selinuxfs: Path = SELINUXFS,
            canary: Callable[[], int | None] = connect_canary) -> Confinement:
    """Everything the checks look at, without judging it (`wanrt confinement` prints it)."""
    context = current_context(attr_current)
    return Confinement(context=context, type=None if context is None else context.split(":")[2],
                       enforce=enforcing(selinuxfs), canary_errno=canary())


def require_selinux_type(expected: str, *, attr_current: Path | tuple[Path, ...] = ATTR_CURRENT,
                         selinuxfs: Path = SELINUXFS,
                         canary: Callable[[], int | None] = connect_canary) -> Confinement:
    """Returns what was found when the process runs as ``expected`` and the kernel enforces it; otherwise raises
    ConfinementError saying what was found and its likely cause."""
    found = inspect(attr_current=attr_current, selinuxfs=selinuxfs, canary=canary)
    judge(expected, found)
    return found


def judge(expected: str, found: Confinement) -> None:
    """Raises ConfinementError unless ``found`` shows ``expected``, enforced."""
    flag = f"--require-selinux-type {expected}"
    if found.context is None:
        raise ConfinementError(
            f"{flag}: SELinux is not enabled in this kernel (the process has no SELinux context). Likely cause: "
            "the host runs without SELinux (Debian and Ubuntu default to AppArmor), or it was booted with "
            "selinux=0. Run on an SELinux host with the wanrt module loaded (selinux/README.md), or leave the "
            "flag out where confinement by SELinux is not available")
    if found.type != expected:
        cause = _LIKELY_CAUSE.get(found.type, "the engine started the container with another label")
        raise ConfinementError(f"{flag}: this process runs as {found.type} ({found.context}). Likely cause: {cause}")
    if found.enforce is False:
        raise ConfinementError(f"{flag}: the type is right but the host is permissive (selinuxfs' enforce is 0): "
                               "denials are logged, nothing is confined")
    if not found.canary_denied:
        if found.canary_errno == errno.EPERM:
            why = ("it was blocked with EPERM, by seccomp, a firewall or a BPF program, not by SELinux (whose "
                   "denials are EACCES), so nothing shows that SELinux enforces")
        else:
            why = ("SELinux let it through: the domain is permissive (`semanage permissive -l`), the host is "
                   "permissive behind a masked selinuxfs, or the loaded wanrt module grants name_connect")
        raise ConfinementError(f"{flag}: the type is right but the canary, a TCP connect to "
                               f"{CANARY_ADDRESS[0]}:{CANARY_ADDRESS[1]} that the wanrt policy denies, "
                               f"{_outcome(found.canary_errno)}: {why}")

"""This installation's own state: the folder wanrt keeps its secrets and its provenance certificate in.

Where: ``$WANRT_STATE_DIR``, else ``$XDG_STATE_HOME/wanrt``, else ``~/.local/state/wanrt`` (the XDG place for
state that outlives a run and is not configuration). Created 0700 on first use; every secret in it 0600, made
with an exclusive create so two processes starting together end up with one. A place that cannot be created,
is not a directory, or that others may write to is refused with a StateError naming it and the ways out: what
lives here signs videos and authenticates caches, so nothing falls back to a weaker default.

What lives here: ``audit-prompts.key`` (the HMAC key prompts are audited under), ``cache.key`` (authenticates the
memory-estimate cache) and ``provenance/`` (the per-installation C2PA certificate, trust/installation.py).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from wanrt.errors import StateError

STATE_ENV = "WANRT_STATE_DIR"
SECRET_BYTES = 32


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the state lives (not created here)."""
    env = os.environ if environ is None else environ
    if env.get(STATE_ENV):
        return Path(env[STATE_ENV])
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "wanrt"


def ensure_dir(path: Path | None = None, *, what: str = "wanrt's state") -> Path:
    """The folder, created 0700 if absent; StateError when it cannot be, or when others may write to it."""
    path = state_dir() if path is None else Path(path)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as err:
        raise StateError(_unusable(path, what, err.strerror or str(err))) from None
    if not stat.S_ISDIR(info.st_mode):
        raise StateError(_unusable(path, what, "it is not a directory"))
    if info.st_mode & 0o022 or info.st_uid != os.geteuid():
        raise StateError(_unusable(path, what, f"it is mode {stat.S_IMODE(info.st_mode):o}, owner uid "
                                               f"{info.st_uid}: only this user may write to it"))
    if not os.access(path, os.W_OK | os.X_OK):
        raise StateError(_unusable(path, what, "it is not writable"))
    return path


def secret(name: str, folder: Path | None = None) -> bytes:
    """The installation secret ``name``: read, or made on first use (random, 0600)."""
    path = ensure_dir(folder) / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return read_secret(path)
    except OSError as err:
        raise StateError(_unusable(path.parent, "wanrt's state", err.strerror or str(err))) from None
    value = secrets.token_bytes(SECRET_BYTES)
    try:
        os.write(fd, value.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return value


def read_secret(path: Path) -> bytes:
    """A secret file (hex, as `secret` writes it, or given by an operator); StateError when others may read it."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise StateError(f"cannot read the secret {path}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    if info.st_mode & 0o077:
        raise StateError(f"the secret {path} is mode {stat.S_IMODE(info.st_mode):o}: others may read it "
                         "(chmod 600 it)")
    try:
        value = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        value = b""
    if len(value) < 16:
        raise StateError(f"the secret {path} is not at least 16 bytes of hex (make one with "
                         "`python3 -c 'import secrets; print(secrets.token_hex(32))'`)")
    return value


def key_id(key: bytes) -> str:
    """A short public name for a secret (recorded where it is used), which does not reveal it."""
    return hashlib.sha256(b"wanrt key id\0" + key).hexdigest()[:16]


def _unusable(path: Path, what: str, reason: str) -> str:
    return (f"{what} lives in {path} (from ${STATE_ENV}, else $XDG_STATE_HOME/wanrt, else "
            f"~/.local/state/wanrt), which cannot be used: {reason}. Set {STATE_ENV} to a directory only this user "
            "can write (a persistent volume in a container)")

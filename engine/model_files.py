"""A model folder opened once, each file read once: what is verified is what is loaded.

Every file the backends run (graphs, external weights, tokenizer, TensorRT engines) is opened through the
folder's own descriptor, hashed while it is read into the buffer the runtime then takes, and compared with the
manifest before anything sees it. Nothing reopens the path afterwards, so renaming another file over a checked
one (or editing it in place) changes nothing that runs: a change during the read fails the hash.

With ``strict`` (``--trust``): every component of a path is opened with O_NOFOLLOW, so a symbolic link anywhere
inside the folder is refused, as are non-regular files and paths that leave the folder (``..``, absolute).
The folder itself may be a link: it is the one the operator named.

Memory: a file is held once, in the buffer it was read into (a 57 GB external-data file is 57 GB of anonymous
memory, which onnxruntime then uses in place; see engine/backends/onnxruntime.py). ``digest`` hashes a file the
backend does not run without keeping it.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np

from wanrt.errors import ArtifactError

CHUNK_BYTES = 8 << 20




class MissingFileError(ArtifactError):
    """A file the folder should hold is not there (as opposed to there but refused: a link, not a file)."""


@dataclasses.dataclass(frozen=True)
class FileBytes:
    """A file's content as read, and the sha256 of exactly those bytes."""

    name: str  # relative POSIX path inside its folder
    sha256: str
    data: np.ndarray  # uint8, read-only

    def tobytes(self) -> bytes:
        """A copy, for small files (manifests, tokenizers)."""
        return self.data.tobytes()


class ModelFolder:
    """One opened model folder. ``read`` and ``digest`` go through its descriptor, never through the path again."""

    def __init__(self, path: Path, *, strict: bool) -> None:
        self.path = Path(path)
        self.strict = strict
        self._fd: int | None = None
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ArtifactError(f"{self.path} is not a directory (it does not exist)") from None
        except NotADirectoryError:
            raise ArtifactError(f"{self.path} is not a directory") from None

    def __enter__(self) -> ModelFolder:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    def where(self, rel: str) -> Path:
        return self.path / rel

    def exists(self, rel: str) -> bool:
        try:
            fd = self._open(rel)
        except MissingFileError:
            return False
        os.close(fd)
        return True

    def read(self, rel: str, expected_sha256: str | None = None, *, listed_in: str = "the manifest") -> FileBytes:
        """The file's bytes, hashed as read; ArtifactError naming the file when they differ from
        ``expected_sha256`` (the manifest's)."""
        fd = self._open(rel)
        try:
            size = os.fstat(fd).st_size
            data = np.empty(size, dtype=np.uint8)
            digest = _read_into(fd, memoryview(data), self.where(rel))
        finally:
            os.close(fd)
        _check(self.where(rel), digest, expected_sha256, listed_in)
        data.flags.writeable = False
        return FileBytes(rel, digest, data)

    def digest(self, rel: str, expected_sha256: str | None = None, *, listed_in: str = "the manifest") -> str:
        """sha256 of a file streamed through a small buffer (a file that is checked but not run)."""
        fd = self._open(rel)
        try:
            digest = hashlib.sha256()
            buffer = memoryview(bytearray(CHUNK_BYTES))
            while n := os.readv(fd, [buffer]):
                digest.update(buffer[:n])
        finally:
            os.close(fd)
        _check(self.where(rel), digest.hexdigest(), expected_sha256, listed_in)
        return digest.hexdigest()

    def files(self) -> list[str]:
        """Every regular file under the folder (relative POSIX paths, sorted), links not followed."""
        found = []
        for top, _dirs, names, dir_fd in os.fwalk(".", dir_fd=self._descriptor(), follow_symlinks=False):
            for name in names:
                if stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    found.append(PurePosixPath(top, name).as_posix().removeprefix("./"))
        return sorted(found)

    def _descriptor(self) -> int:
        if self._fd is None:
            raise ArtifactError(f"{self.path} was closed")
        return self._fd

    def _open(self, rel: str) -> int:
        """A descriptor for a regular file inside the folder; with ``strict`` no component may be a link."""
        parts = PurePosixPath(rel).parts
        if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
            raise ArtifactError(f"{self.path}: {rel!r} is not a path inside the folder")
        nofollow = os.O_NOFOLLOW if self.strict else 0
        parent, opened = self._descriptor(), []
        try:
            for part in parts[:-1]:
                parent = self._open_at(parent, part, os.O_RDONLY | os.O_DIRECTORY | nofollow, rel)
                opened.append(parent)
            fd = self._open_at(parent, parts[-1], os.O_RDONLY | nofollow, rel)
        finally:
            for fd_ in opened:
                os.close(fd_)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ArtifactError(f"{self.where(rel)} is not a regular file")
        return fd

    def _open_at(self, parent: int, name: str, flags: int, rel: str) -> int:
        try:
            return os.open(name, flags | os.O_CLOEXEC, dir_fd=parent)
        except FileNotFoundError:
            raise MissingFileError(f"{self.where(rel)} is missing") from None
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR) and self.strict:
                raise ArtifactError(f"{self.where(rel)}: {name} is a symbolic link; with --trust every file is "
                                    "read from inside the signed folder itself, never through a link") from None
            raise ArtifactError(f"cannot open {self.where(rel)}: {err.strerror}") from None


def _read_into(fd: int, buffer: memoryview, where: Path) -> str:
    digest = hashlib.sha256()
    done, size = 0, len(buffer)
    while done < size:
        n = os.readv(fd, [buffer[done:done + CHUNK_BYTES]])
        if n == 0:
            raise ArtifactError(f"{where} shrank while it was read (it is being changed)")
        digest.update(buffer[done:done + n])
        done += n
    if os.read(fd, 1):
        raise ArtifactError(f"{where} grew while it was read (it is being changed)")
    return digest.hexdigest()


def _check(where: Path, actual: str, expected: str | None, listed_in: str) -> None:
    if expected is not None and actual != expected:
        raise ArtifactError(f"{where} does not match {listed_in} (sha256 {actual}, expected {expected}): the file "
                            "changed after it was made")


# Called with the folder, its manifest's name and that manifest's exact bytes before they are parsed: trust's
# signature check (trust/folders.py) plugs in here, so the bytes it verifies are the bytes the loader then uses.
ManifestCheck = Callable[["ModelFolder", str, bytes], None]


def read_manifest_bytes(folder: ModelFolder, name: str, check: ManifestCheck | None, *, not_found: str) -> FileBytes:
    """The folder's manifest, read once and handed to ``check`` (when given) before anyone parses it."""
    if not folder.exists(name):
        raise ArtifactError(f"{folder.path} has no {name}: {not_found}")
    data = folder.read(name)
    if check is not None:
        check(folder, name, data.tobytes())
    return data

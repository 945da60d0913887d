"""Tampering helpers for the trust tests (a plain module: `from conftest import` depends on which conftest
pytest imported first)."""
from pathlib import Path


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Changes one bit of one byte (the middle one unless told): the smallest tampering there is."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))

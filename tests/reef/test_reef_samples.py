"""The contact-sheet writer makes a valid PNG of the tiled frames."""

from __future__ import annotations

import zlib

import numpy as np

from wanrt.reef.samples import contact_sheet, write_png


def test_contact_sheet_png_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    rows = [[rng.integers(0, 256, (8, 10, 3), dtype=np.uint8) for _ in range(3)] for _ in range(2)]
    sheet = contact_sheet(rows, scale=2, gap=1)
    assert sheet.shape == (2 * 17 + 1, 3 * 21 + 1, 3)
    assert np.array_equal(sheet[1:17, 1:21], np.repeat(np.repeat(rows[0][0], 2, 0), 2, 1))
    path = tmp_path / "sheet.png"
    write_png(path, sheet)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    idat = data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8]
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(sheet.shape[0], -1)
    assert np.array_equal(raw[:, 1:].reshape(sheet.shape), sheet)  # filter byte 0, then RGB rows

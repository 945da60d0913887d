"""wanrt.publish: the one atomic folder publish that export, quantize and build-engines share."""

from __future__ import annotations

import os

import pytest

from wanrt.errors import InvalidRequestError
from wanrt.publish import destination, publishing


def _write_two_files(folder):
    (folder / "a.onnx").write_bytes(b"graph")
    (folder / "sub").mkdir()
    (folder / "sub" / "b.json").write_text("{}")


def test_publishes_into_an_absent_folder_and_parents(tmp_path):
    out = tmp_path / "deep" / "art"
    with publishing(out) as partial:
        assert partial.parent == out.parent and partial.name.startswith(".art.partial-")
        assert not out.exists()  # nothing at the destination until the block is done
        _write_two_files(partial)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["a.onnx", "sub", "sub/b.json"]
    assert os.listdir(out.parent) == ["art"]


def test_an_empty_destination_is_replaced(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    with publishing(out) as partial:
        _write_two_files(partial)
    assert (out / "a.onnx").read_bytes() == b"graph" and os.listdir(tmp_path) == ["art"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failure_leaves_nothing_behind(tmp_path, error):
    out = tmp_path / "art"
    with pytest.raises(type(error)), publishing(out) as partial:
        _write_two_files(partial)
        raise error
    assert os.listdir(tmp_path) == []


def test_a_failure_keeps_an_existing_empty_destination_as_it_was(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    with pytest.raises(RuntimeError), publishing(out) as partial:
        _write_two_files(partial)
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == ["art"] and os.listdir(out) == []


def test_something_appearing_at_the_destination_meanwhile_is_not_overwritten(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(OSError), publishing(out) as partial:
        _write_two_files(partial)
        out.mkdir()
        (out / "theirs").write_text("keep me")
    assert os.listdir(tmp_path) == ["art"] and os.listdir(out) == ["theirs"]


def test_refuses_a_non_empty_folder_or_a_file(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    (tmp_path / "file").write_text("x")
    for name, message in (("busy", "not empty"), ("file", "not a directory")):
        with pytest.raises(InvalidRequestError, match=message) as err:
            with publishing(tmp_path / name):
                pytest.fail("the block must not run")
        assert err.value.field == "out"
    assert sorted(os.listdir(tmp_path)) == ["busy", "file"]


def test_destination_is_absolute_and_normalised(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    assert destination(".") == tmp_path / "empty"  # a real name and parent for the hidden sibling
    assert destination("../empty/sub/..") == tmp_path / "empty"
    assert destination("../new") == tmp_path / "new"

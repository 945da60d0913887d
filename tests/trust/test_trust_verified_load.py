"""onnxruntime sessions made from the bytes read and hashed once compute what onnxruntime computes when it opens
the files itself, on drawn graphs whose weights lie in external data (aligned or not, float32 and float16,
MatMul weights handed in place, other tensors copied); bad external-data references are refused."""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from wanrt.engine.backends.onnxruntime import GraphReader
from wanrt.engine.model_files import ModelFolder
from wanrt.errors import ArtifactError


def _drawn_graph(folder: Path, rng: np.random.Generator, *, misalign: int = 0,
                 dtype: type = np.float32) -> dict[str, str]:
    """x @ W1 (+ b) -> Relu -> @ W2, a Transpose of a weight folded by onnxruntime, fp16 or fp32 weights; the
    external data written by hand so that tensors may start at offsets their type does not divide."""
    dim, hidden = int(rng.integers(4, 40)), int(rng.integers(4, 40))
    onnx_type = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    tensors = {"w1": rng.standard_normal((dim, hidden)).astype(dtype),
               "b": rng.standard_normal((hidden,)).astype(dtype),
               "w2t": rng.standard_normal((dim, hidden)).astype(dtype)}  # used transposed: a constant to fold
    data, initializers = bytearray(), []
    for name, array in tensors.items():
        data += b"\0" * misalign
        offset = len(data)
        data += array.tobytes()
        tensor = TensorProto(name=name, data_type=onnx_type, dims=array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "graph.onnx.data"), ("offset", str(offset)), ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        initializers.append(tensor)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("Transpose", ["w2t"], ["w2"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "drawn", [helper.make_tensor_value_info("x", onnx_type, ["n", dim])],
                              [helper.make_tensor_value_info("y", onnx_type, ["n", dim])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    (folder / "graph.onnx").write_bytes(model.SerializeToString())
    (folder / "graph.onnx.data").write_bytes(bytes(data))
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in ("graph.onnx",
                                                                                          "graph.onnx.data")}


def _verified_session(folder: Path, hashes: dict[str, str], tmp: Path) -> tuple[object, GraphReader]:
    reader = GraphReader(ModelFolder(folder, strict=True), hashes, tmp)
    return reader.session("graph", "graph.onnx", ort.SessionOptions, ["CPUExecutionProvider"]), reader


@pytest.mark.parametrize(("misalign", "dtype"), [(0, np.float32), (1, np.float32), (2, np.float32),
                                                 (0, np.float16)])
def test_sessions_from_verified_bytes_compute_what_onnxruntime_computes(tmp_path, misalign, dtype):
    seed = random.randrange(1 << 30)
    print(f"drawn graph seed {seed}")
    rng = np.random.default_rng(seed)
    hashes = _drawn_graph(tmp_path, rng, misalign=misalign, dtype=dtype)
    session, reader = _verified_session(tmp_path, hashes, tmp_path / "scratch")
    reference = ort.InferenceSession(str(tmp_path / "graph.onnx"), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, session.get_inputs()[0].shape[1])).astype(
        np.float32 if session.get_inputs()[0].type == "tensor(float)" else np.float16)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], reference.run(None, {"x": x})[0])
    assert reader.digests == hashes
    # fp32: w1 runs in place, aligned (a misaligned tensor is copied alone). fp16: onnxruntime's CPU provider
    # casts fp16 weights to fp32 while it optimizes, reading them: the graph falls back to copied weights.
    in_place = [a.ctypes.data % a.itemsize for a, _ in reader.held]
    assert in_place == ([0] if dtype == np.float32 else [])


def test_a_weight_read_by_the_optimizers_falls_back_to_copies(tmp_path, monkeypatch, caplog):
    import wanrt.engine.backends.onnxruntime as backend

    rng = np.random.default_rng(1)
    hashes = _drawn_graph(tmp_path, rng)
    monkeypatch.setattr(backend, "_matmul_weights", lambda model: {t.name for t in model.graph.initializer})
    with caplog.at_level(logging.WARNING, "wanrt.engine"):
        session, reader = _verified_session(tmp_path, hashes, tmp_path / "scratch")
    assert "optimizers read the weights of graph.onnx" in caplog.text and not reader.held
    reference = ort.InferenceSession(str(tmp_path / "graph.onnx"), providers=["CPUExecutionProvider"])
    x = np.ones((2, session.get_inputs()[0].shape[1]), np.float32 if "float)" in session.get_inputs()[0].type
                else np.float16)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], reference.run(None, {"x": x})[0])


@pytest.mark.parametrize("change", ["outside", "past the end", "unlisted", "changed"])
def test_bad_external_data_is_refused(tmp_path, change):
    hashes = _drawn_graph(tmp_path, np.random.default_rng(2))
    model = onnx.load(str(tmp_path / "graph.onnx"), load_external_data=False)
    entries = {e.key: e for e in model.graph.initializer[0].external_data}
    if change == "outside":
        entries["location"].value = "../elsewhere.data"
    elif change == "past the end":
        entries["offset"].value = str((tmp_path / "graph.onnx.data").stat().st_size)
    elif change == "unlisted":
        del hashes["graph.onnx.data"]
    if change in ("outside", "past the end"):
        (tmp_path / "graph.onnx").write_bytes(model.SerializeToString())
        hashes["graph.onnx"] = hashlib.sha256((tmp_path / "graph.onnx").read_bytes()).hexdigest()
    if change == "changed":
        with open(tmp_path / "graph.onnx.data", "r+b") as f:
            f.write(b"\x01")
    expected = {"outside": "outside its folder", "past the end": "past the end", "unlisted": "not listed",
                "changed": "does not match"}[change]
    with pytest.raises(ArtifactError, match=expected):
        _verified_session(tmp_path, hashes, tmp_path / "scratch")

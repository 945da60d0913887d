"""The committed generated code is exactly what the .proto gives, and the .proto ships with the package."""

from __future__ import annotations

from pathlib import Path

from wanrt.server import codegen


def test_committed_generated_code_matches_the_proto(tmp_path):
    codegen.generate(tmp_path)
    for name in codegen.GENERATED:
        committed = (codegen.OUT_DIR / name).read_text(encoding="utf-8")
        fresh = (tmp_path / name).read_text(encoding="utf-8")
        assert committed == fresh, f"server/v1/{name} is stale: run `python -m wanrt.server.codegen`"


def test_proto_ships_as_package_data():
    from wanrt.proto import proto_file

    shipped = proto_file()
    assert shipped.is_file()
    assert shipped.read_text(encoding="utf-8") == (codegen.PROTO_ROOT / codegen.PROTO).read_text(encoding="utf-8")
    assert "package wanrt.v1;" in shipped.read_text(encoding="utf-8")


def test_descriptor_keeps_the_canonical_proto_path():
    """Reflection and other languages see wanrt/v1/wanrt.proto, whatever the Python module is called."""
    from wanrt.server.v1 import wanrt_pb2

    assert wanrt_pb2.DESCRIPTOR.name == "wanrt/v1/wanrt.proto"
    assert wanrt_pb2.DESCRIPTOR.package == "wanrt.v1"
    assert Path(wanrt_pb2.__file__).parent == codegen.OUT_DIR

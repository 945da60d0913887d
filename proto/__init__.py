"""The .proto sources of wanrt's gRPC API, shipped as package data (``wanrt/v1/wanrt.proto``).

Clients in other languages generate their stubs from these files; ``wanrt.server.codegen`` generates the
Python modules in ``wanrt.server.v1`` from them.
"""

from importlib.resources import files
from importlib.resources.abc import Traversable


def proto_file() -> Traversable:
    """The API definition as installed with the package."""
    return files(__name__) / "wanrt" / "v1" / "wanrt.proto"

"""Python modules generated from proto/wanrt/v1/wanrt.proto; regenerate with ``python -m wanrt.server.codegen``."""

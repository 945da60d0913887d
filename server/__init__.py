"""wanrt's gRPC service: ``wanrt serve`` and ``wanrt client`` (API ``wanrt.v1``, see proto/wanrt/v1/wanrt.proto).

Layout, in the order a call meets it: config (validated settings), auth (bearer-token interceptor), service
(parses, validates, maps errors to status codes once), jobs (bounded queue, one worker per accelerator),
audit (JSON lines), metrics (Prometheus), app (build, start, drain). client is the Python API and CLI client.
"""

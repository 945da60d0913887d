"""Helpers for the server tests: certificates made on the spot, servers on 127.0.0.1 with ephemeral ports,
audit-log and metrics readers. Nothing here fakes generation: servers run the real tiny Wan pipeline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc

from wanrt.engine.request import GenerationRequest
from wanrt.server.app import WanrtServer
from wanrt.server.client import Client
from wanrt.server.config import ServerConfig

# Small enough for a 2-core CI machine, large enough for a few-second job (a step costs ~20 ms at 16x16).
TEST_LIMITS = {"max_frames": 9, "max_height": 64, "max_width": 64, "max_steps": 100}
# The cheapest real job: one frame, one step, no classifier-free guidance.
TINY = GenerationRequest(prompt="a turtle swims over coral", frames=1, height=16, width=16, steps=1, guidance=1.0)
# Jobs that run for seconds (each step well over 10 ms on CPU), for queueing, cancellation, deadlines, draining.
LONG = dataclasses.replace(TINY, frames=9, height=64, width=64, steps=100, guidance=4.0)
MEDIUM = dataclasses.replace(TINY, frames=5, height=32, width=32, steps=60)

GRPC_SERVICE = "wanrt.v1.VideoGeneration"


# --- certificates -------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_subject_cn: str
    rogue_ca: Path  # a CA nobody trusts, and a client certificate it signed
    rogue_client_cert: Path
    rogue_client_key: Path


def make_certs(out: Path) -> Certs:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wanrt tests"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def authority(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        return cert, key

    def leaf(cn: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], *, server: bool):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca[0].subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
        return builder.sign(ca[1], hashes.SHA256()), key

    ca = authority("wanrt test CA")
    rogue = authority("rogue CA")
    server_cert, server_key = leaf("localhost", ca, server=True)
    client_cert, client_key = leaf("batch-renderer", ca, server=False)
    rogue_cert, rogue_key = leaf("batch-renderer", rogue, server=False)
    return Certs(
        ca=write_cert(ca[0], out / "ca.pem"),
        server_cert=write_cert(server_cert, out / "server.pem"), server_key=write_key(server_key, out / "server.key"),
        client_cert=write_cert(client_cert, out / "client.pem"), client_key=write_key(client_key, out / "client.key"),
        client_subject_cn="batch-renderer",
        rogue_ca=write_cert(rogue[0], out / "rogue-ca.pem"),
        rogue_client_cert=write_cert(rogue_cert, out / "rogue-client.pem"),
        rogue_client_key=write_key(rogue_key, out / "rogue-client.key"),
    )


# --- in-process servers ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Running:
    server: WanrtServer
    audit_log: Path

    @property
    def address(self) -> str:
        return self.server.address

    def client(self, **kwargs: object) -> Client:
        if not any(k in kwargs for k in ("ca", "cert", "insecure")):
            kwargs["insecure"] = True
        return Client(self.address, **kwargs)

    def audit(self) -> list[dict]:
        return read_audit(self.audit_log)

    def metric(self, name: str, **labels: str) -> float:
        return scrape_metric(self.server.metrics_port, name, **labels)


@contextlib.contextmanager
def running_server(pipeline: object, tmp_path: Path, **overrides: object) -> Iterator[Running]:
    """A real WanrtServer on 127.0.0.1 (ephemeral ports), plaintext unless TLS options are given."""
    settings = {"model": None, "listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0",
                "audit_log": tmp_path / f"audit-{time.monotonic_ns()}.jsonl", **TEST_LIMITS, **overrides}
    if not any(k in overrides for k in ("tls_cert", "insecure")):
        settings["insecure"] = True
    server = WanrtServer(ServerConfig(**settings), [pipeline])
    server.start()
    try:
        yield Running(server, Path(settings["audit_log"]))
    finally:
        server.stop()


def read_audit(path: Path) -> list[dict]:
    """The calls the audit log records (its chain events, genesis and checkpoints, left out)."""
    records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if r.get("event") not in ("genesis", "checkpoint")]


def scrape_metric(port: int, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when absent)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def wait_until(predicate: object, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def health_status(address: str, service: str = "", *, channel: grpc.Channel | None = None) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    own = channel is None
    channel = channel or grpc.insecure_channel(address)
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=5)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    finally:
        if own:
            channel.close()


def rss_bytes(pid: int | None = None) -> int:
    with open(f"/proc/{pid or os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- `wanrt serve` as a subprocess ---------------------------------------------------------------------------

@dataclasses.dataclass
class ServeProcess:
    process: subprocess.Popen
    address: str
    metrics_port: int
    audit_log: Path
    ready: dict = dataclasses.field(default_factory=dict)  # the "serving" line
    log: Path | None = None  # its stderr (the operator's log)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)


@contextlib.contextmanager
def serve_process(model: Path, tmp_path: Path, *extra: str, tls: Certs | None = None,
                  limits: dict[str, int] | None = TEST_LIMITS, timeout: float = 120,
                  prefix: tuple[str, ...] = ()) -> Iterator[ServeProcess]:
    """Runs `wanrt serve` (torch backend unless ``extra`` says otherwise; plaintext on loopback unless ``tls``)
    and waits for its "serving" line (``ready`` holds it). ``prefix`` runs before it and execs it (a cgroup,
    a resource limit)."""
    audit = tmp_path / f"serve-audit-{time.monotonic_ns()}.jsonl"
    options = [f"--{k.replace('_', '-')}={v}" for k, v in (limits or {}).items()]
    options += ["--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key)] if tls else ["--insecure"]
    if "--backend" not in extra:
        options += ["--backend", "torch"]
    command = [*prefix, sys.executable, "-m", "wanrt.cli", "serve", "--model", str(model), "--listen", "127.0.0.1:0",
               "--metrics-listen", "127.0.0.1:0", "--audit-log", str(audit), *options, *extra]
    log = tmp_path / f"serve-stderr-{time.monotonic_ns()}.log"
    stderr = open(log, "w+")  # a file: a full pipe would block
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                break
        if not line.startswith("{"):
            process.kill()
            stderr.seek(0)
            raise AssertionError(f"wanrt serve did not start: {stderr.read()[-3000:]}")
        ready = json.loads(line)
        yield ServeProcess(process, ready["grpc"], ready["metrics_port"], audit, ready, log)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        stderr.close()

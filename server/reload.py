"""SIGHUP: TLS material and the token file read again while the server runs, without dropping a job or a call.

gRPC takes its server certificate from a fetcher that grpc calls at every new handshake
(``grpc.dynamic_ssl_server_credentials``): a reload hands it the new material once, so new connections get the
new certificate and connections already open keep theirs. The token file is parsed into a new store that
replaces the old one in one reference swap: calls already admitted are not checked again, calls that start after
it are checked against it. Whatever fails to read or to check (a half-copied key, a typo in the token file) is
refused and the material in use stays: a reload can never leave the server without TLS or without tokens.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

import grpc

from wanrt.server.config import check_ca, check_certificates
from wanrt.server.errors import ConfigError

log = logging.getLogger("wanrt.server")


@dataclasses.dataclass(frozen=True)
class _Material:
    key: bytes
    cert: bytes
    ca: bytes | None


class TlsMaterial:
    """The server's certificate, key and (mutual TLS) client CA, as files that may be replaced while serving."""

    def __init__(self, cert: Path, key: Path, ca: Path | None) -> None:
        self.cert, self.key, self.ca = Path(cert), Path(key), None if ca is None else Path(ca)
        self._lock = threading.Lock()
        self._current = self._read()
        self._pending: grpc.ServerCertificateConfiguration | None = None

    def _read(self) -> _Material:
        check_certificates(self.cert, self.key)  # ConfigError when the pair does not parse or match
        if self.ca is not None:
            check_ca("client_ca", self.ca)
        try:
            return _Material(self.key.read_bytes(), self.cert.read_bytes(),
                             None if self.ca is None else self.ca.read_bytes())
        except OSError as err:
            raise ConfigError("tls_cert", f"cannot read the TLS material: {err}") from None

    @staticmethod
    def _configuration(material: _Material) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(material.key, material.cert)],
                                                         root_certificates=material.ca)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._configuration(self._current), self._fetch,
                                                   require_client_authentication=self.ca is not None)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc calls this at every new handshake: the new configuration once after a reload, else None (keep)."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def reload(self) -> bool:
        """Reads the files again; True when they changed (new handshakes get them). ConfigError leaves all as is."""
        material = self._read()
        with self._lock:
            if material == self._current:
                return False
            self._current = material
            self._pending = self._configuration(material)
        return True

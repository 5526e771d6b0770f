"""TLS for the servers and mutual TLS between services, from the certificate
paths in the configuration."""

from __future__ import annotations

from pathlib import Path

import grpc

from common.config import Settings


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise SystemExit(f"cannot read TLS file {path!r}: {error.strerror}") from error


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """None for plaintext. With a CA, clients must present a certificate it signed."""
    if not (settings.tls_cert_file or settings.tls_key_file):
        return None
    if not (settings.tls_cert_file and settings.tls_key_file):
        raise SystemExit("TLS needs both REWARDS_TLS_CERT_FILE and REWARDS_TLS_KEY_FILE")
    key_pair = [(_read(settings.tls_key_file), _read(settings.tls_cert_file))]
    if settings.tls_ca_file:
        return grpc.ssl_server_credentials(
            key_pair, root_certificates=_read(settings.tls_ca_file), require_client_auth=True
        )
    return grpc.ssl_server_credentials(key_pair)


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """For calls to the services: None for plaintext (no TLS files configured);
    otherwise TLS that verifies the server against the CA (the system's roots
    when there is none) and presents this process's certificate (mTLS)."""
    if not (settings.tls_ca_file or settings.tls_cert_file):
        return None
    roots = _read(settings.tls_ca_file) if settings.tls_ca_file else None
    certificate = _read(settings.tls_cert_file) if settings.tls_cert_file else None
    key = _read(settings.tls_key_file) if settings.tls_key_file else None
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=certificate)

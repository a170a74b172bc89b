"""How the edge reaches the cloud: a plain channel on a private network, TLS (optionally mutual) elsewhere.

The bearer token and every uploaded token travel on this channel, so anything
that leaves a private network should use TLS. Certificates are read once, when
the channel opens, and a missing file is a clear error, not an outage.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from citer_edge.errors import CiterEdgeError


@dataclass(frozen=True)
class CloudTls:
    """TLS settings for the cloud channel; all optional: ``CloudTls()`` trusts the system's CAs."""

    ca_file: Path | None = None  # PEM bundle to trust instead of the system's roots (a private CA)
    server_name: str | None = None  # expected name in the server certificate, when it differs from the address
    client_cert: Path | None = None  # mutual TLS: this device's certificate chain (PEM) ...
    client_key: Path | None = None  # ... and its private key (PEM)

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise CiterEdgeError("mutual TLS needs both a client certificate and its key")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "CA bundle"),
            private_key=_read(self.client_key, "client key"),
            certificate_chain=_read(self.client_cert, "client certificate"),
        )


def open_channel(address: str, tls: CloudTls | None, options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
    """A plain channel when ``tls`` is None, else a TLS channel with the given trust and identity."""
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    extra = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.secure_channel(address, tls.credentials(), options=[*options, *extra])


def _read(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise CiterEdgeError(f"cannot read the {what} {path}: {error.strerror or error}") from None

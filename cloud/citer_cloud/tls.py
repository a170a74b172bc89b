"""TLS for the service, and the warnings an operator needs before exposing it.

The bearer token and every device's text cross this port; on anything but a
private network it needs TLS (and, with a client CA, mutual TLS so only
enrolled devices connect at all).
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """Credentials from PEM files; with ``client_ca`` every client must present a certificate it signed."""
    return grpc.ssl_server_credentials(
        [(_read(key, "TLS key"), _read(cert, "TLS certificate"))],
        root_certificates=_read(client_ca, "client CA") if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach; an empty host or any other name may be reachable."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: assume it is reachable from elsewhere


def exposure_warnings(host: str, tls: bool, auth: bool) -> list[str]:
    """What is unsafe about serving on ``host`` with these settings (nothing on loopback)."""
    if is_loopback(host):
        return []
    warnings = []
    if not tls:
        warnings.append(f"serving on {host} without TLS: tokens, prompts and credentials cross the network in clear")
    if not auth:
        warnings.append(f"serving on {host} without auth: anyone who reaches the port can use the model")
    return warnings


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read the {what} {path}: {error.strerror or error}") from None

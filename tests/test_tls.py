"""TLS between edge and cloud, with certificates the test makes itself: trust, names, mutual TLS, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from citer_cloud.tls import exposure_warnings
from citer_edge import CloudSession, LocalModel, SamplingSettings
from citer_edge.cloud.channel import CloudTls
from citer_edge.errors import CiterEdgeError
from tests.certs import issue, make_ca
from tests.conftest import CHAT_PROMPT
from tests.test_cli import run_cli


@pytest.fixture
def pki(tmp_path: Path):
    ca = make_ca(tmp_path)
    return {
        "ca": ca,
        "server": issue(tmp_path, "server", ca),
        "named": issue(tmp_path, "named", ca, dns_names=("citer.test",), ip_addresses=()),
        "client": issue(tmp_path, "client", ca, dns_names=(), ip_addresses=(), client=True),
        "stranger_ca": make_ca(tmp_path, "stranger CA"),
    }


def _decodes(server, slm: LocalModel, tls: CloudTls | None) -> bool:
    cloud = CloudSession(server.address, slm.fingerprint, connect_timeout_s=5, tls=tls)
    try:
        return cloud.decode(slm.tokenize(CHAT_PROMPT), 2, SamplingSettings()) is not None
    finally:
        cloud.close()


def test_client_trusting_the_ca_decodes_over_tls(start_server, smol_path, smol_slm, pki) -> None:
    server = start_server(smol_path, tls_cert=pki["server"].cert, tls_key=pki["server"].key)
    assert _decodes(server, smol_slm, CloudTls(ca_file=pki["ca"][0].cert))
    assert server.sessions.stats().decode_requests == 1


def test_untrusted_certificate_and_plain_client_are_refused_before_any_work(
    start_server, smol_path, smol_slm, pki
) -> None:
    server = start_server(smol_path, tls_cert=pki["server"].cert, tls_key=pki["server"].key)
    assert not _decodes(server, smol_slm, CloudTls(ca_file=pki["stranger_ca"][0].cert))
    assert not _decodes(server, smol_slm, None)
    assert server.sessions.stats().decode_requests == 0


def test_server_name_override_checks_the_name_in_the_certificate(start_server, smol_path, smol_slm, pki) -> None:
    server = start_server(smol_path, tls_cert=pki["named"].cert, tls_key=pki["named"].key)
    ca = pki["ca"][0].cert
    assert not _decodes(server, smol_slm, CloudTls(ca_file=ca))  # 127.0.0.1 is not in the certificate
    assert not _decodes(server, smol_slm, CloudTls(ca_file=ca, server_name="other.test"))
    assert _decodes(server, smol_slm, CloudTls(ca_file=ca, server_name="citer.test"))


def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_ca(start_server, smol_path, smol_slm, pki) -> None:
    ca = pki["ca"][0].cert
    server = start_server(smol_path, tls_cert=pki["server"].cert, tls_key=pki["server"].key, tls_client_ca=ca)
    assert not _decodes(server, smol_slm, CloudTls(ca_file=ca))
    stranger = issue(pki["client"].cert.parent, "stranger", pki["stranger_ca"], dns_names=(), ip_addresses=(),
                     client=True)  # fmt: skip
    assert not _decodes(server, smol_slm, CloudTls(ca_file=ca, client_cert=stranger.cert, client_key=stranger.key))
    assert server.sessions.stats().decode_requests == 0
    client = pki["client"]
    assert _decodes(server, smol_slm, CloudTls(ca_file=ca, client_cert=client.cert, client_key=client.key))


def test_unreadable_ca_file_is_a_clear_error(tmp_path: Path, smol_slm) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(CiterEdgeError, match=f"cannot read the CA bundle {missing}"):
        CloudSession("127.0.0.1:1", smol_slm.fingerprint, tls=CloudTls(ca_file=missing))
    with pytest.raises(CiterEdgeError, match="needs both a client certificate and its key"):
        CloudTls(client_cert=missing)


def test_edge_cli_reaches_a_tls_cloud(start_server, smol_path, pki) -> None:
    server = start_server(smol_path, tls_cert=pki["server"].cert, tls_key=pki["server"].key)
    result = run_cli(
        "generate", "--slm", str(smol_path), "--cloud", server.address, "--cloud-ca", str(pki["ca"][0].cert),
        "--policy", "cloud", "--max-tokens", "3", "--json", "Hi.",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["routing"]["llm"] == 3


def test_cloud_cli_refuses_a_certificate_without_its_key(smol_path, pki) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "citer_cloud.cli", "serve", "--model", str(smol_path), "--tls-cert",
         str(pki["server"].cert)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "citer-cloud: error: TLS needs both a certificate (--tls-cert) and its key (--tls-key)"
    )


def test_cloud_cli_names_an_unreadable_certificate_in_one_line(smol_path, tmp_path: Path, pki) -> None:
    missing = tmp_path / "missing.key"
    result = subprocess.run(
        [sys.executable, "-m", "citer_cloud.cli", "serve", "--model", str(smol_path), "--port", "0",
         "--tls-cert", str(pki["server"].cert), "--tls-key", str(missing)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"citer-cloud: error: cannot read the TLS key {missing}: No such file or directory"
    )


def test_exposed_address_without_tls_or_auth_is_warned_about() -> None:
    assert exposure_warnings("127.0.0.1", tls=False, auth=False) == []
    assert exposure_warnings("::1", tls=False, auth=False) == []
    assert exposure_warnings("localhost", tls=False, auth=False) == []
    both = exposure_warnings("0.0.0.0", tls=False, auth=False)
    assert len(both) == 2 and "without TLS" in both[0] and "without auth" in both[1]
    assert exposure_warnings("gpu-box.example", tls=True, auth=False) == [
        "serving on gpu-box.example without auth: anyone who reaches the port can use the model"
    ]
    assert exposure_warnings("10.0.0.5", tls=True, auth=True) == []

"""TLS on every server and mutual TLS between the services, with throwaway
certificates: a plaintext client, a client without a certificate and one
whose certificate another CA signed are all refused."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rewards.v1 import achievements_pb2, achievements_pb2_grpc, levels_pb2, levels_pb2_grpc, xp_pb2, xp_pb2_grpc
from tests.cluster import STANDARD_LEVELS, Cluster, mint_test_token

Factory = Callable[..., Cluster]


@dataclass(frozen=True)
class Issued:
    certificate: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Issued(cert_path, key_path)


class CertificateAuthority:
    def __init__(self, directory: Path, name: str) -> None:
        self.directory, self.key = directory, ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = _write(directory, name, self.certificate, self.key).certificate

    def issue(self, stem: str) -> Issued:
        """A certificate for localhost, good for both ends of a connection (the services are both)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(stem))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return _write(self.directory, stem, certificate, key)


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[dict[str, object]]:
    ca, rogue = CertificateAuthority(tmp_path, "rewards-ca"), CertificateAuthority(tmp_path, "rogue-ca")
    yield {"ca": ca, "service": ca.issue("service"), "game": ca.issue("game-server"), "rogue": rogue.issue("rogue")}


def secure(port: int, ca: CertificateAuthority, client: Issued | None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.pem.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.certificate.read_bytes() if client else None,
    )
    # Over TLS the token can travel as gRPC call credentials.
    token = grpc.access_token_call_credentials(mint_test_token())
    return grpc.secure_channel(f"localhost:{port}", grpc.composite_channel_credentials(credentials, token))


def test_mutual_tls_end_to_end_and_between_services(new_cluster: Factory, pki: dict, user_id: str) -> None:
    ca, service, game = pki["ca"], pki["service"], pki["game"]
    c = new_cluster(tls_cert_file=str(service.certificate), tls_key_file=str(service.key), tls_ca_file=str(ca.pem))
    with (
        secure(c.ports["levels"], ca, game) as levels_channel,
        secure(c.ports["xp"], ca, game) as xp_channel,
        secure(c.ports["achievements"], ca, game) as achievements_channel,
    ):
        levels = levels_pb2_grpc.LevelsServiceStub(levels_channel)
        for level in STANDARD_LEVELS:
            levels.PutLevel(levels_pb2.PutLevelRequest(level=level), timeout=10)
        xp = xp_pb2_grpc.XpServiceStub(xp_channel)
        award = xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=150, reason="t", request_id="r"), timeout=10)
        # XP reached Levels over mTLS: the check was not deferred.
        assert (award.level_check_deferred, award.level_up.leveled_up, award.level) == (False, True, 2)
        achievements = achievements_pb2_grpc.AchievementsServiceStub(achievements_channel)
        achievements.PutAchievement(
            achievements_pb2.PutAchievementRequest(
                achievement=achievements_pb2.Achievement(achievement_id="tls", name="TLS", xp_reward=20)
            ),
            timeout=10,
        )
        unlocked = achievements.UnlockAchievement(
            achievements_pb2.UnlockAchievementRequest(user_id=user_id, achievement_id="tls"), timeout=10
        )
        # Achievements reached XP over mTLS: the reward was paid.
        assert (unlocked.xp_awarded, unlocked.total_xp) == (20, 170)


@pytest.mark.parametrize("client", ["plaintext", "no certificate", "another CA's certificate"])
def test_clients_without_a_certificate_of_the_ca_are_refused(new_cluster: Factory, pki: dict, client: str) -> None:
    ca, service = pki["ca"], pki["service"]
    c = new_cluster(tls_cert_file=str(service.certificate), tls_key_file=str(service.key), tls_ca_file=str(ca.pem))
    channel = {
        "plaintext": lambda: grpc.insecure_channel(f"localhost:{c.ports['xp']}"),
        "no certificate": lambda: secure(c.ports["xp"], ca, None),
        "another CA's certificate": lambda: secure(c.ports["xp"], ca, pki["rogue"]),
    }[client]()
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            xp_pb2_grpc.XpServiceStub(channel).GetProgress(xp_pb2.GetProgressRequest(user_id="someone"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_server_only_tls_serves_clients_that_trust_the_ca(new_cluster: Factory, pki: dict) -> None:
    ca, service = pki["ca"], pki["service"]
    c = new_cluster(tls_cert_file=str(service.certificate), tls_key_file=str(service.key))
    with secure(c.ports["xp"], ca, None) as channel:
        progress = xp_pb2_grpc.XpServiceStub(channel).GetProgress(
            xp_pb2.GetProgressRequest(user_id="someone"), timeout=5
        )
    assert progress.total_xp == 0
    with grpc.insecure_channel(f"localhost:{c.ports['xp']}") as plaintext:
        with pytest.raises(grpc.RpcError) as caught:
            xp_pb2_grpc.XpServiceStub(plaintext).GetProgress(xp_pb2.GetProgressRequest(user_id="someone"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

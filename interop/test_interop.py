"""meshroot driven by an independent stack: Python grpcio and cryptography
play pilot-agent and ztunnel; openssl verifies chains and TLS settings."""

import datetime
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import struct_pb2

from conftest import TOKENS

TD = "cluster.local"
REVIEWS = f"spiffe://{TD}/ns/bookinfo/sa/reviews"
PRODUCTPAGE = f"spiffe://{TD}/ns/bookinfo/sa/productpage"


def make_csr(key, identity, subject):
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    builder = builder.add_extension(san, critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def pilot_agent_csr(identity):
    """pilot-agent: RSA-2048, a single empty O= attribute, critical URI SAN."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "")])
    return key, make_csr(key, identity, subject)


def ztunnel_csr(identity):
    """ztunnel: ECDSA P-256, empty subject, critical URI SAN."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key, make_csr(key, identity, x509.Name([]))


def call(pb, ca, csr, token, metadata=None, ttl=86400, cluster="Kubernetes"):
    ca_pb2, ca_pb2_grpc = pb
    creds = grpc.ssl_channel_credentials(root_certificates=ca.root_pem)
    with grpc.secure_channel(f"localhost:{ca.port}", creds) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        req = ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=ttl)
        if metadata is not None:
            s = struct_pb2.Struct()
            s.update(metadata)
            req.metadata.CopyFrom(s)
        headers = [("clusterid", cluster)]
        if token:
            headers.append(("authorization", f"Bearer {token}"))
        return stub.CreateCertificate(req, metadata=headers, timeout=30)


def pem_certs(text):
    return x509.load_pem_x509_certificates(text.encode())


def check_response_layout(resp, ca):
    chain = list(resp.cert_chain)
    assert len(chain) >= 2, "pilot-agent rejects a chain of one element"
    for i, element in enumerate(chain[:-1]):
        assert element.endswith("\n"), f"element {i} must end in a newline"
        assert len(pem_certs(element)) == 1, f"element {i}: ztunnel keeps only one certificate per element"
    bundle = pem_certs(chain[-1])
    trusted = pem_certs(ca.root_pem.decode())
    assert [c.fingerprint(hashes.SHA256()) for c in bundle] == [c.fingerprint(hashes.SHA256()) for c in trusted]
    return pem_certs(chain[0])[0], [pem_certs(e)[0] for e in chain[1:-1]]


def check_leaf_profile(leaf, issuer, identity, key, ttl_seconds):
    now = datetime.datetime.now(datetime.timezone.utc)
    assert leaf.serial_number > 0 and leaf.serial_number.bit_length() >= 128
    assert len(leaf.subject) == 0, "subject must be empty"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical, "with an empty subject the SAN must be critical"
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [identity]
    assert len(list(san.value)) == 1, "exactly one SAN"
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.content_commitment)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.value.ca is False
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert aki == ski
    assert leaf.issuer == issuer.subject
    nb, na = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    assert abs((now - nb).total_seconds() - 120) < 30, "NotBefore is back-dated two minutes"
    assert (na - nb).total_seconds() == ttl_seconds + 120
    assert na <= issuer.not_valid_after_utc
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert leaf.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def openssl_verify(ca, leaf, intermediates):
    with tempfile.TemporaryDirectory() as d:
        leaf_path = Path(d) / "leaf.pem"
        leaf_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        untrusted = Path(d) / "chain.pem"
        untrusted.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in intermediates))
        out = subprocess.run(
            ["openssl", "verify", "-CAfile", str(ca.bundle_path), "-untrusted", str(untrusted),
             "-purpose", "sslclient", str(leaf_path)],
            capture_output=True, text=True,
        )
        assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stdout + out.stderr


def test_pilot_agent_gets_a_workload_certificate(pb, ca):
    key, csr = pilot_agent_csr(REVIEWS)
    resp = call(pb, ca, csr, TOKENS["pilot"], metadata={"CertSigner": ""}, ttl=86400)
    leaf, intermediates = check_response_layout(resp, ca)
    assert len(intermediates) == 1
    check_leaf_profile(leaf, intermediates[0], REVIEWS, key, 86400)
    openssl_verify(ca, leaf, intermediates)


def test_ztunnel_gets_certificates_for_workloads_on_its_node(pb, ca):
    key, csr = ztunnel_csr(PRODUCTPAGE)
    resp = call(pb, ca, csr, TOKENS["ztunnel"], metadata={"ImpersonatedIdentity": PRODUCTPAGE}, ttl=3600)
    leaf, intermediates = check_response_layout(resp, ca)
    check_leaf_profile(leaf, intermediates[0], PRODUCTPAGE, key, 3600)
    openssl_verify(ca, leaf, intermediates)


def test_default_and_maximum_ttl(pb, ca):
    key, csr = ztunnel_csr(REVIEWS)
    leaf, ints = check_response_layout(call(pb, ca, csr, TOKENS["pilot"], ttl=0), ca)
    check_leaf_profile(leaf, ints[0], REVIEWS, key, 86400)
    leaf, ints = check_response_layout(call(pb, ca, csr, TOKENS["pilot"], ttl=10 * 365 * 86400), ca)
    check_leaf_profile(leaf, ints[0], REVIEWS, key, 90 * 86400)


@pytest.mark.parametrize(
    "name, token, identity, meta, cluster, code",
    [
        ("unknown token", "nope", REVIEWS, None, "Kubernetes", grpc.StatusCode.UNAUTHENTICATED),
        ("no token", None, REVIEWS, None, "Kubernetes", grpc.StatusCode.UNAUTHENTICATED),
        ("foreign cluster", TOKENS["pilot"], REVIEWS, None, "cluster-2", grpc.StatusCode.UNAUTHENTICATED),
        ("someone else's identity", TOKENS["pilot"], PRODUCTPAGE, None, "Kubernetes", grpc.StatusCode.UNAUTHENTICATED),
        ("impersonation by a workload", TOKENS["pilot"], PRODUCTPAGE, {"ImpersonatedIdentity": PRODUCTPAGE},
         "Kubernetes", grpc.StatusCode.UNAUTHENTICATED),
        ("non-string impersonation", TOKENS["ztunnel"], PRODUCTPAGE, {"ImpersonatedIdentity": 7},
         "Kubernetes", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_rejections(pb, ca, name, token, identity, meta, cluster, code):
    _, csr = ztunnel_csr(identity)
    with pytest.raises(grpc.RpcError) as e:
        call(pb, ca, csr, token, metadata=meta, cluster=cluster)
    assert e.value.code() == code, f"{name}: {e.value.details()}"
    if token:
        assert token not in e.value.details()


def test_malformed_csr_is_invalid_argument(pb, ca):
    with pytest.raises(grpc.RpcError) as e:
        call(pb, ca, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
             TOKENS["pilot"])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("invalid CSR")


def s_client(ca, *args):
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{ca.port}", "-servername", "localhost",
         "-CAfile", str(ca.bundle_path), "-verify_return_error", "-alpn", "h2", *args],
        input="", capture_output=True, text=True, timeout=30,
    )


def test_alpn_h2_and_a_verifiable_serving_certificate(ca):
    out = s_client(ca, "-tls1_3", "-verify_hostname", "localhost")
    assert "ALPN protocol: h2" in out.stdout, out.stdout
    assert "Verify return code: 0 (ok)" in out.stdout
    assert "TLSv1.3" in out.stdout


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"])
def test_tls12_fips_140_2_suites_on_p256(ca, cipher):
    out = s_client(ca, "-tls1_2", "-cipher", cipher, "-groups", "P-256")
    assert f"Cipher is {cipher}" in out.stdout, out.stdout + out.stderr
    assert "ALPN protocol: h2" in out.stdout
    assert "Verify return code: 0 (ok)" in out.stdout


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"])
def test_tls12_non_gcm_suites_are_refused(ca, cipher):
    out = s_client(ca, "-tls1_2", "-cipher", cipher)
    assert f"Cipher is {cipher}" not in out.stdout
    assert out.returncode != 0


def test_metrics_use_istiod_names(ca, pb):
    _, csr = ztunnel_csr(REVIEWS)
    call(pb, ca, csr, TOKENS["pilot"])
    text = urllib.request.urlopen(f"http://127.0.0.1:{ca.ops_port}/metrics", timeout=10).read().decode()
    issued = [l for l in text.splitlines() if l.startswith("citadel_server_success_cert_issuance_count ")]
    assert issued and int(issued[0].split()[1]) >= 1, text
    assert urllib.request.urlopen(f"http://127.0.0.1:{ca.ops_port}/readyz", timeout=10).status == 200


def test_rate_limited_callers_get_resource_exhausted_with_a_pushback_hint(pb, limited_ca):
    """grpcio, not tonic, reads the status and the retry-pushback trailer."""
    identity = "spiffe://cluster.local/ns/bookinfo/sa/reviews"
    for _ in range(2):
        _, csr = pilot_agent_csr(identity)
        call(pb, limited_ca, csr, TOKENS["pilot"])
    _, csr = pilot_agent_csr(identity)
    with pytest.raises(grpc.RpcError) as refused:
        call(pb, limited_ca, csr, TOKENS["pilot"])
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details().startswith(f"rate limited: identity {identity} is over its rate limit")
    trailers = dict(refused.value.trailing_metadata())
    pushback = int(trailers["grpc-retry-pushback-ms"])
    assert 1 <= pushback <= 1000
    # Another identity is not held back.
    zt = "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
    _, csr = ztunnel_csr(zt)
    call(pb, limited_ca, csr, TOKENS["ztunnel"])
    # After the hint, the identity is served again.
    time.sleep(pushback / 1000 + 0.05)
    _, csr = pilot_agent_csr(identity)
    call(pb, limited_ca, csr, TOKENS["pilot"])

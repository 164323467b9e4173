#!/usr/bin/env python3
"""Writes the committed seed corpora for the fuzz targets (fuzz/seeds/<target>/).

Run with the interop venv (it has `cryptography`):
    ~/.cache/meshroot/venv-*/bin/python fuzz/seeds/generate.py   (after scripts/test.sh made it)
Inputs are built here, independently of meshroot, plus the openssl fixtures
in tests/fixtures/openssl. Keys are fresh on every run; the seeds only need
to be well-formed, not stable.
"""

import pathlib
import struct

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE.parent.parent / "tests" / "fixtures" / "openssl"
APP = "spiffe://cluster.local/ns/ns1/sa/app"


def write(target: str, name: str, data: bytes) -> None:
    d = HERE / target
    d.mkdir(exist_ok=True)
    (d / name).write_bytes(data)


def csr(key, uris, cn=None, dns=()):
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    b = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return b.sign(key, hashes.SHA256())


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number: int, wire: int, payload: bytes) -> bytes:
    head = varint(number << 3 | wire)
    return head + (varint(len(payload)) + payload if wire == 2 else payload)


def request(csr_pem: bytes, ttl: int = 0, metadata: dict | None = None) -> bytes:
    """An IstioCertificateRequest, encoded by hand (csr=1, validity_duration=3, metadata=4)."""
    out = field(1, 2, csr_pem)
    if ttl:
        out += field(3, 0, varint(ttl))
    if metadata:
        entries = b""
        for k, v in metadata.items():
            # Value: string_value=3 (length-delimited), number_value=2 (64-bit double).
            value = field(3, 2, v.encode()) if isinstance(v, str) else field(2, 1, struct.pack("<d", v))
            entries += field(1, 2, field(1, 2, k.encode()) + field(2, 2, value))
        out += field(4, 2, entries)
    return out


def main() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    rsa2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = serialization.Encoding.PEM

    # csr: PEM and DER, ours and openssl's.
    app = csr(p256, [APP])
    write("csr", "p256-app.pem", app.public_bytes(pem))
    write("csr", "p256-app.der", app.public_bytes(serialization.Encoding.DER))
    write("csr", "rsa-cn-dns.pem", csr(rsa2048, [], cn="example.com", dns=["example.com", "*.example.com"]).public_bytes(pem))
    for f in sorted(FIXTURES.glob("csr-*.pem")):
        write("csr", f.name, f.read_bytes())

    # pem_keys: keys in every encoding, certificates, and cert+key pairs.
    for f in sorted(FIXTURES.glob("*.pem")):
        if not f.name.startswith("csr-"):
            write("pem_keys", f.name, f.read_bytes())
    for cert, key in [
        ("rsa4096-root-cert.pem", "rsa4096-root-key.pkcs8.pem"),
        ("ec-prime256v1-root-cert.pem", "ec-prime256v1-root-key.sec1.pem"),
    ]:
        write("pem_keys", f"pair-{cert}", (FIXTURES / cert).read_bytes() + (FIXTURES / key).read_bytes())

    # spiffe: accepted forms and each refused one.
    ids = [
        APP,
        "spiffe://cluster.local",
        "spiffe://td.example/ns/default/sa/default",
        "spiffe://a-b_c.d/ns/x/sa/y",
        "spiffe://Cluster.local/ns/a/sa/b",
        "spiffe://cluster.local:8080/ns/a/sa/b",
        "spiffe://cluster.local/ns/a/sa/b?x=1",
        "spiffe://cluster.local/ns/a/sa/b#frag",
        "spiffe://cluster.local/ns/../sa/b",
        "spiffe://cluster.local/ns/./sa/b",
        "spiffe://cluster.local//ns/a",
        "spiffe://user@cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns/a%20b/sa/c",
        "SPIFFE://cluster.local/ns/a/sa/b",
        "spiffe:///ns/a/sa/b",
        "spiffe://cluster.local/ns/a/sa/b/",
        "spiffe://cluster.local/ns/caf\u00e9/sa/b",
        "spiffe://cluster.local/ns/a\u0000/sa/b",
    ]
    for i, s in enumerate(ids):
        write("spiffe", f"id-{i:02}", s.encode())

    # handler: selector byte (bits 0-1 token, 2-3 clusterid) + the request.
    app_pem = app.public_bytes(pem)
    zt_target = "spiffe://cluster.local/ns/bookinfo/sa/reviews"
    zt = csr(p256, [zt_target]).public_bytes(pem)
    write("handler", "app-ok", bytes([0b0101]) + request(app_pem))
    write("handler", "app-ttl", bytes([0b0001]) + request(app_pem, ttl=3600))
    write("handler", "app-ttl-negative", bytes([0b0001]) + request(app_pem, ttl=-5))
    write("handler", "app-rsa", bytes([0b1001]) + request(csr(rsa2048, [APP]).public_bytes(pem)))
    write("handler", "ztunnel-impersonates", bytes([0b0110]) + request(zt, metadata={"ImpersonatedIdentity": zt_target}))
    write("handler", "app-impersonates", bytes([0b0001]) + request(zt, metadata={"ImpersonatedIdentity": zt_target}))
    write("handler", "metadata-number", bytes([0b0010]) + request(zt, metadata={"ImpersonatedIdentity": 1.0}))
    write("handler", "wrong-uri", bytes([0b0001]) + request(zt))
    write("handler", "no-token", bytes([0b0000]) + request(app_pem))
    write("handler", "unknown-cluster", bytes([0b1101]) + request(app_pem))
    write("handler", "garbage-csr", bytes([0b0001]) + request(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"))

    # issuer: flags (bit 0 isCA, bit 1 mesh signer, bit 2 CSR extensions must
    # match), usage bits (ISSUER_USAGES in src/fuzzing.rs), duration seconds
    # as a little-endian i64 (0: none), then the CSR. The name says the
    # decision the replay test expects: ok-, invalid- or policy-.
    def issuer(name, csr_bytes, flags=0b100, usages=0, seconds=0):
        write("issuer", name, bytes([flags, usages]) + struct.pack("<q", seconds) + csr_bytes)

    def named(key, cn=None, dns=(), uris=(), ips=(), emails=(), org=None, ca=None):
        attrs = ([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []) + (
            [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
        )
        sans = (
            [x509.DNSName(d) for d in dns]
            + [x509.UniformResourceIdentifier(u) for u in uris]
            + [x509.IPAddress(__import__("ipaddress").ip_address(i)) for i in ips]
            + [x509.RFC822Name(e) for e in emails]
        )
        b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=not attrs)
        if ca is not None:
            b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        return b.sign(key, hashes.SHA256())

    web = named(p256, dns=["web.example.com"]).public_bytes(pem)
    issuer("ok-web", web)
    issuer("ok-web-der", named(p256, dns=["web.example.com"]).public_bytes(serialization.Encoding.DER))
    issuer("ok-web-mesh-rsa", named(rsa2048, dns=["web.example.com"], ips=["10.1.2.3"]).public_bytes(pem), flags=0b110)
    issuer("ok-web-48h", web, seconds=48 * 3600)
    issuer("ok-web-clamped", web, seconds=400 * 86400)
    issuer("ok-server-client", web, usages=0b1111)
    issuer("ok-ca", named(p256, cn="fuzz ca", ca=True).public_bytes(pem), flags=0b101)
    issuer("ok-org-email", named(p256, cn="x", org="Example", emails=["ops@example.com"]).public_bytes(pem))
    issuer("invalid-8000y", web, seconds=8000 * 365 * 86400)
    issuer("invalid-max-duration", web, seconds=(1 << 63) - 1)
    issuer("invalid-negative-duration", web, seconds=-1)
    issuer("invalid-cert-sign-leaf", web, usages=0b10001)
    issuer("invalid-ca-from-mesh", named(p256, cn="fuzz ca", ca=True).public_bytes(pem), flags=0b111)
    issuer("invalid-garbage", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    issuer("policy-istiod-dns", named(p256, dns=["istiod.istio-system.svc"]).public_bytes(pem))
    issuer("policy-istiod-cn", named(p256, cn="istiod.istio-system.svc", dns=["web.example.com"]).public_bytes(pem))
    issuer("policy-spiffe", named(p256, uris=["spiffe://cluster.local/ns/istio-system/sa/istiod"]).public_bytes(pem))
    issuer("policy-outside", named(p256, dns=["evil.org"], ips=["192.168.0.1"]).public_bytes(pem))
    issuer("policy-any-ocsp", web, usages=0b1100001)
    issuer("policy-subject-email", named(p256, cn="x", emails=["ceo@evil.org"], org="Evil").public_bytes(pem))


if __name__ == "__main__":
    main()

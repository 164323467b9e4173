//! The hostile-input matrix: every case goes over a real TLS + HTTP/2
//! connection as raw gRPC frames (so headers and bodies can be anything a
//! client could send), and must get its expected status and message. After
//! the whole matrix the server still issues and reports healthy.

use crate::support;

use meshroot::pb::IstioCertificateRequest;
use meshroot::pki::KeyAlgorithm;
use prost::Message;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct};
use support::*;
use tonic::Code;

/// What a client sends: header pairs (raw bytes allowed) and a gRPC body.
struct Call {
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
}

fn app_headers() -> Vec<(&'static str, Vec<u8>)> {
    vec![("authorization", bearer(DEV_TOKEN).into_bytes()), ("clusterid", b"Kubernetes".to_vec())]
}

fn ztunnel_headers() -> Vec<(&'static str, Vec<u8>)> {
    vec![("authorization", bearer(ZTUNNEL_TOKEN).into_bytes())]
}

fn message(csr: &str, ttl: i64, metadata: Option<Struct>) -> Vec<u8> {
    IstioCertificateRequest { csr: csr.into(), validity_duration: ttl, metadata }.encode_to_vec()
}

fn app(csr: &str) -> Call {
    Call { headers: app_headers(), body: message(csr, 0, None) }
}

/// ztunnel asking for `identity` (the CSR names a valid one: the identity is
/// checked first).
fn impersonating(identity: &str) -> Call {
    let (_, csr) = csr_for("spiffe://cluster.local/ns/a/sa/b", KeyAlgorithm::EcdsaP256);
    let meta = metadata(&[("ImpersonatedIdentity", Kind::StringValue(identity.into()))]);
    Call { headers: ztunnel_headers(), body: message(&csr, 0, meta) }
}

fn with_metadata(meta: Struct) -> Call {
    let (_, csr) = csr_for(DEFAULT_ID, KeyAlgorithm::EcdsaP256);
    Call { headers: app_headers(), body: message(&csr, 0, Some(meta)) }
}

fn good_csr() -> String {
    csr_for(DEFAULT_ID, KeyAlgorithm::EcdsaP256).1
}

/// DER tag-length-value.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n.to_be_bytes().iter().copied().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// The length of the TLV at the start of `der`.
fn tlv_len(der: &[u8]) -> usize {
    let first = der[1] as usize;
    if first < 0x80 {
        return 2 + first;
    }
    let n = first & 0x7f;
    let len = der[2..2 + n].iter().fold(0usize, |acc, b| acc << 8 | *b as usize);
    2 + n + len
}

/// A CSR naming our identity and `named`'s public key, but signed by `signer`.
fn csr_signed_by_another_key() -> String {
    let named = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let signer = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(DEFAULT_ID.try_into().unwrap())];
    let honest = params.serialize_request(&named).unwrap();
    let der = honest.der().to_vec();
    let (_, parsed) = x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
    let info = parsed.certification_request_info.raw.to_vec();
    let outer_header = header_len(&der);
    let after_info = &der[outer_header + info.len()..];
    let alg = after_info[..tlv_len(after_info)].to_vec();
    let signature = rcgen::SigningKey::sign(&signer, &info).unwrap();
    let mut bits = vec![0u8];
    bits.extend(signature);
    let forged = tlv(0x30, &[info, alg, tlv(0x03, &bits)].concat());
    meshroot::pki::pem::encode("CERTIFICATE REQUEST", &forged)
}

fn header_len(der: &[u8]) -> usize {
    let first = der[1] as usize;
    if first < 0x80 { 2 } else { 2 + (first & 0x7f) }
}

/// A CSR whose SAN extension lists `uris` and `dns` (rcgen encodes exactly what it is given).
fn csr_with_sans(uris: &[String], dns: &[String]) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| rcgen::SanType::URI(u.as_str().try_into().unwrap()))
        .chain(dns.iter().map(|d| rcgen::SanType::DnsName(d.as_str().try_into().unwrap())))
        .collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// A gRPC frame: flag, 4-byte length, message.
fn frame(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend((message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Sends one call; the gRPC status, or the HTTP/2 refusal as text.
async fn send(
    client: &h2::client::SendRequest<bytes::Bytes>,
    call: Call,
    framed: Option<Vec<u8>>,
) -> Result<tonic::Status, String> {
    let mut req = http::Request::builder()
        .method("POST")
        .uri("https://localhost/istio.v1.auth.IstioCertificateService/CreateCertificate")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in &call.headers {
        req = req.header(*name, http::HeaderValue::from_bytes(value).unwrap());
    }
    let req = req.body(()).unwrap();
    let (response, mut stream) =
        client.clone().ready().await.map_err(|e| e.to_string())?.send_request(req, false).map_err(|e| e.to_string())?;
    let body = framed.unwrap_or_else(|| frame(0, &call.body));
    stream.reserve_capacity(body.len());
    stream.send_data(bytes::Bytes::from(body), true).map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("HTTP {}", response.status()));
    }
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return Ok(status);
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.map_err(|e| e.to_string())?.ok_or("no trailers")?;
    Ok(tonic::Status::from_header_map(&trailers).ok_or("no grpc-status")?)
}

struct Case {
    name: &'static str,
    call: Call,
    /// A raw body instead of one frame around `call.body`.
    framed: Option<Vec<u8>>,
    code: Code,
    /// The message starts with this.
    prefix: &'static str,
    /// And contains this.
    mention: String,
}

fn case(name: &'static str, call: Call, code: Code, prefix: &'static str, mention: impl Into<String>) -> Case {
    Case { name, call, framed: None, code, prefix, mention: mention.into() }
}

fn cases() -> Vec<Case> {
    use Code::*;
    let good = good_csr();
    let der_body = {
        let der = meshroot::pki::pem::decode_one(good.as_bytes(), "CERTIFICATE REQUEST", 1 << 16).unwrap();
        der.to_vec()
    };
    let pem_of = |der: &[u8]| meshroot::pki::pem::encode("CERTIFICATE REQUEST", der);
    let many_dns: Vec<String> = (0..2000).map(|i| format!("h{i}.example.com")).collect();
    let many_uris: Vec<String> = (0..1000).map(|i| format!("spiffe://cluster.local/ns/default/sa/s{i}")).collect();
    let nul_uri = vec![format!("{DEFAULT_ID}\u{0}.evil")];
    let spiffe = |s: &str| format!("spiffe://cluster.local{s}");
    let mut bad_frames = Vec::new();
    // validity_duration (field 3) as an 11-byte varint: over 64 bits.
    let mut overflow = message(&good, 0, None);
    overflow.extend([0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    bad_frames.push(overflow);
    let mut cases = vec![
        // The CSR itself.
        case("empty CSR", app(""), InvalidArgument, "invalid CSR: ", "PEM"),
        case("garbage text", app("hello, CA"), InvalidArgument, "invalid CSR: ", "PEM"),
        case("truncated PEM", app(&good[..good.len() / 2]), InvalidArgument, "invalid CSR: ", "PEM"),
        // Found by the fuzzer: the mismatched label used to be echoed, newlines and all.
        case(
            "mismatched END label",
            app(&good
                .replace("-----END CERTIFICATE REQUEST", &format!("-----END CERTIFICATE REQU\n{}", "A".repeat(5000)))),
            InvalidArgument,
            "invalid CSR: ",
            "mismatching BEGIN",
        ),
        case("garbage DER", app(&pem_of(&[0x30, 0x03, 0x02, 0x01, 0x00])), InvalidArgument, "invalid CSR: ", ""),
        case("truncated DER", app(&pem_of(&der_body[..der_body.len() - 10])), InvalidArgument, "invalid CSR: ", ""),
        case(
            "DER with trailing bytes",
            app(&pem_of(&[der_body.clone(), vec![0, 0]].concat())),
            InvalidArgument,
            "invalid CSR: ",
            "",
        ),
        case(
            "wrong PEM label: certificate",
            app(&fixture("not-ca-cert.pem")),
            InvalidArgument,
            "invalid CSR: ",
            "expected PEM label",
        ),
        case(
            "wrong PEM label: private key",
            app(&fixture("k-p256.pem")),
            InvalidArgument,
            "invalid CSR: ",
            "expected PEM label",
        ),
        case(
            "two CSR blocks",
            app(&format!("{good}{good}")),
            InvalidArgument,
            "invalid CSR: ",
            "exactly one PEM block",
        ),
        case(
            "CSR then a certificate",
            app(&format!("{good}{}", fixture("not-ca-cert.pem"))),
            InvalidArgument,
            "invalid CSR: ",
            "exactly one PEM block",
        ),
        case(
            "CSR over 64 KiB",
            app(&format!("{good}{}", "\n".repeat(70_000))),
            InvalidArgument,
            "invalid CSR: ",
            "over the limit",
        ),
        case(
            "2000 DNS SANs",
            app(&csr_with_sans(&[DEFAULT_ID.into()], &many_dns)),
            Unauthenticated,
            "not authorized: ",
            "2000 DNS name(s)",
        ),
        case(
            "1000 URI SANs",
            app(&csr_with_sans(&many_uris, &[])),
            Unauthenticated,
            "not authorized: ",
            "1000 URI SANs",
        ),
        case(
            "NUL byte in the URI SAN",
            app(&csr_with_sans(&nul_uri, &[])),
            Unauthenticated,
            "not authorized: ",
            "\u{fffd}.evil",
        ),
        case("RSA-1024 key", app(&fixture("csr-rsa1024.pem")), InvalidArgument, "invalid CSR: ", "1024 bits"),
        case("DSA key", app(&fixture("csr-dsa.pem")), InvalidArgument, "invalid CSR: ", "DSA"),
        case("SHA-1 signature", app(&fixture("csr-rsa2048-sha1.pem")), InvalidArgument, "invalid CSR: ", "SHA-1"),
        case("signed by another key", app(&csr_signed_by_another_key()), InvalidArgument, "invalid CSR: ", "signature"),
        // SPIFFE forms, through ztunnel's impersonation.
        case(
            "SPIFFE query",
            impersonating(&spiffe("/ns/a/sa/b?x=1")),
            Unauthenticated,
            "authentication failed: impersonated identity",
            "query",
        ),
        case(
            "SPIFFE fragment",
            impersonating(&spiffe("/ns/a/sa/b#f")),
            Unauthenticated,
            "authentication failed: impersonated identity",
            "fragment",
        ),
        case(
            "SPIFFE port",
            impersonating("spiffe://cluster.local:443/ns/a/sa/b"),
            Unauthenticated,
            "authentication failed: impersonated identity",
            "port",
        ),
        case(
            "SPIFFE dot segment",
            impersonating(&spiffe("/ns/../sa/b")),
            Unauthenticated,
            "authentication failed: impersonated identity",
            "dot",
        ),
        case(
            "SPIFFE uppercase trust domain",
            impersonating("spiffe://Cluster.local/ns/a/sa/b"),
            Unauthenticated,
            "authentication failed: impersonated identity",
            "trust domain",
        ),
        case(
            "SPIFFE userinfo",
            impersonating("spiffe://me@cluster.local/ns/a/sa/b"),
            Unauthenticated,
            "authentication failed: impersonated identity",
            "userinfo",
        ),
        case(
            "SPIFFE non-ASCII",
            impersonating(&spiffe("/ns/café/sa/b")),
            Unauthenticated,
            "authentication failed: impersonated identity",
            "",
        ),
        case(
            "SPIFFE NUL byte",
            impersonating(&spiffe("/ns/a\u{0}/sa/b")),
            Unauthenticated,
            "authentication failed: impersonated identity",
            "\u{fffd}",
        ),
        case(
            "SPIFFE not an Istio identity",
            impersonating(&spiffe("/workload/x")),
            Unauthenticated,
            "authentication failed: impersonated identity",
            "the form",
        ),
        // TTLs: all clamped, never an error (see ttls_are_clamped_never_trusted).
        // Metadata.
        case(
            "ImpersonatedIdentity a number",
            with_metadata(metadata(&[("ImpersonatedIdentity", Kind::NumberValue(1.0))]).unwrap()),
            InvalidArgument,
            "invalid request: ",
            "must be a string",
        ),
        case(
            "ImpersonatedIdentity a list",
            with_metadata(
                metadata(&[("ImpersonatedIdentity", Kind::ListValue(ListValue { values: vec![] }))]).unwrap(),
            ),
            InvalidArgument,
            "invalid request: ",
            "must be a string",
        ),
        case(
            "ImpersonatedIdentity a struct",
            with_metadata(metadata(&[("ImpersonatedIdentity", Kind::StructValue(Struct::default()))]).unwrap()),
            InvalidArgument,
            "invalid request: ",
            "must be a string",
        ),
        case(
            "metadata with 1000 fields",
            with_metadata(Struct {
                fields: (0..1000)
                    .map(|i| (format!("k{i}"), prost_types::Value { kind: Some(Kind::BoolValue(true)) }))
                    .collect(),
            }),
            InvalidArgument,
            "invalid request: ",
            "1000 fields",
        ),
        case(
            "ImpersonatedIdentity of 100 KiB",
            impersonating(&spiffe(&format!("/ns/a/sa/{}", "b".repeat(100 * 1024)))),
            Unauthenticated,
            "authentication failed: impersonated identity",
            "longer than",
        ),
        case(
            "app impersonating",
            Call { headers: app_headers(), body: impersonating(&spiffe("/ns/a/sa/b")).body },
            Unauthenticated,
            "authentication failed: ",
            "not a trusted node account",
        ),
        // Headers.
        case(
            "no authorization",
            Call { headers: vec![], body: message(&good, 0, None) },
            Unauthenticated,
            "authentication failed: ",
            "no credentials",
        ),
        case(
            "two authorization headers",
            Call { headers: [app_headers(), ztunnel_headers()].concat(), body: message(&good, 0, None) },
            Unauthenticated,
            "authentication failed: ",
            "more than one authorization header",
        ),
        case(
            "200 authorization headers",
            Call {
                headers: (0..200).map(|_| ("authorization", bearer(DEV_TOKEN).into_bytes())).collect(),
                body: message(&good, 0, None),
            },
            Unauthenticated,
            "authentication failed: ",
            "more than one authorization header",
        ),
        case(
            "Basic authorization",
            Call { headers: vec![("authorization", b"Basic YTpi".to_vec())], body: message(&good, 0, None) },
            Unauthenticated,
            "authentication failed: ",
            "not a Bearer token",
        ),
        case(
            "unknown token",
            Call { headers: vec![("authorization", bearer("forged").into_bytes())], body: message(&good, 0, None) },
            Unauthenticated,
            "authentication failed: ",
            "",
        ),
        case(
            "non-UTF-8 authorization",
            Call { headers: vec![("authorization", b"Bearer \xff\xfe".to_vec())], body: message(&good, 0, None) },
            Unauthenticated,
            "authentication failed: ",
            "not printable ASCII",
        ),
        case(
            "non-UTF-8 clusterid",
            Call {
                headers: vec![
                    ("authorization", bearer(DEV_TOKEN).into_bytes()),
                    ("clusterid", b"\xc3\x28cluster".to_vec()),
                ],
                body: message(&good, 0, None),
            },
            Unauthenticated,
            "authentication failed: ",
            "clusterid header is not printable ASCII",
        ),
        case(
            "two clusterids",
            Call {
                headers: [app_headers(), vec![("clusterid", b"Kubernetes".to_vec())]].concat(),
                body: message(&good, 0, None),
            },
            Unauthenticated,
            "authentication failed: ",
            "more than one clusterid",
        ),
        case(
            "unknown clusterid",
            Call {
                headers: vec![("authorization", bearer(DEV_TOKEN).into_bytes()), ("clusterid", b"elsewhere".to_vec())],
                body: message(&good, 0, None),
            },
            Unauthenticated,
            "authentication failed: ",
            "unknown cluster id",
        ),
    ];
    // Framing and protobuf: refused before the handler, the grpc-go way.
    let mut framed = |name, body: Vec<u8>, code, prefix, mention: &str| {
        cases.push(Case { name, call: app(""), framed: Some(body), code, prefix, mention: mention.into() })
    };
    framed("TTL varint over 64 bits", frame(0, &bad_frames[0]), Internal, "failed to decode Protobuf message", "");
    framed("not protobuf", frame(0, b"\xff\xff\xff\xff"), Internal, "failed to decode Protobuf message", "");
    framed(
        "message over 128 KiB",
        frame(0, &message(&"A".repeat(200 * 1024), 0, None)),
        OutOfRange,
        "Error, decoded message length too large",
        "",
    );
    framed("compressed frame, no encoding", frame(1, &message(&good, 0, None)), Internal, "", "compress");
    framed(
        "frame shorter than its length",
        {
            let mut f = frame(0, &message(&good, 0, None));
            f.truncate(f.len() - 5);
            f
        },
        Internal,
        "",
        "",
    );
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_input_gets_its_status_and_the_server_stays_healthy() {
    let ca = start_ca().await;
    let client = h2_client(&ca, false).await;
    let cases = cases();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for c in cases {
        let name = c.name;
        match send(&client, c.call, c.framed).await {
            Ok(status) => {
                let m = status.message();
                if status.code() != c.code || !m.starts_with(c.prefix) || !m.contains(&c.mention) {
                    failures.push(format!(
                        "{name}: got {:?} {m:?}; want {:?} {:?}…{:?}",
                        status.code(),
                        c.code,
                        c.prefix,
                        c.mention
                    ));
                }
                if m.chars().any(|ch| ch.is_control()) || m.len() > 1024 {
                    failures.push(format!("{name}: the message is not short, printable text: {m:?}"));
                }
                if m.contains(DEV_TOKEN) || m.contains(ZTUNNEL_TOKEN) {
                    failures.push(format!("{name}: the message echoes a token"));
                }
            }
            Err(e) => failures.push(format!("{name}: the HTTP/2 stream failed: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Still healthy: the same connection and a new one both get certificates.
    let ok = send(&client, app(&good_csr()), None).await.unwrap();
    assert_eq!(ok.code(), Code::Ok, "{ok:?}");
    let fresh = call(&ca, request(&good_csr(), 0, None, &[("authorization", &bearer(DEV_TOKEN))])).await.unwrap();
    meshroot::client::verify_response(&fresh, &ca.bundle(), DEFAULT_ID).unwrap();
    let health = http_get(ca.server.ops_addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
}

/// Headers over the 64 KiB limit are refused at the HTTP/2 layer; the connection
/// may be dropped, but the server is not.
#[tokio::test]
async fn oversized_headers_are_refused_and_the_server_carries_on() {
    let ca = start_ca().await;
    let client = h2_client(&ca, false).await;
    let call_with_big_header = Call {
        headers: [app_headers(), vec![("x-padding", vec![b'a'; 100 * 1024])]].concat(),
        body: message(&good_csr(), 0, None),
    };
    let outcome = send(&client, call_with_big_header, None).await;
    match &outcome {
        Ok(status) => assert_ne!(status.code(), Code::Ok, "{status:?}"),
        Err(e) => assert!(!e.is_empty()),
    }
    let fresh = call(&ca, request(&good_csr(), 0, None, &[("authorization", &bearer(DEV_TOKEN))])).await.unwrap();
    meshroot::client::verify_response(&fresh, &ca.bundle(), DEFAULT_ID).unwrap();
}

/// TTLs are the client's wish, never trusted: zero, negative and i64::MIN get
/// the default; huge ones the mesh maximum; u64::MAX on the wire reads as -1.
#[tokio::test]
async fn ttls_are_clamped_never_trusted() {
    let ca = start_ca().await;
    for (ttl, expected) in [
        (0i64, 24 * 3600i64),
        (-1, 24 * 3600),
        (i64::MIN, 24 * 3600),
        (3600, 3600),
        (i64::MAX, 90 * 24 * 3600),
        (100 * 365 * 24 * 3600, 90 * 24 * 3600),
    ] {
        let resp = call(&ca, request(&good_csr(), ttl, None, &[("authorization", &bearer(DEV_TOKEN))])).await.unwrap();
        let leaf = meshroot::pki::pem::decode_certificates(resp.cert_chain[0].as_bytes(), 1 << 16).unwrap();
        let cert = meshroot::pki::authority::parse_certificate(&leaf[0]).unwrap();
        let v = cert.validity();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let lifetime = v.not_after.timestamp() - now;
        assert!((lifetime - expected).abs() < 300, "ttl {ttl}: lifetime {lifetime}, want {expected}");
    }
}

use x509_parser::prelude::FromDer;

/// The server caps concurrent streams per connection and says so in its SETTINGS, so one
/// client cannot open unbounded work on one connection (h2 keeps a connection's stream tables
/// at their largest until it closes).
#[tokio::test]
async fn concurrent_streams_per_connection_are_capped() {
    let ca = start_ca().await;
    let client = h2_client(&ca, false).await;
    // SETTINGS arrive with the server's preface; one round trip makes sure they were read.
    let _ = send(&client, app(&good_csr()), None).await.unwrap();
    assert_eq!(client.current_max_send_streams(), 100);
}

/// A client that fires a burst on a fresh connection opens as many streams as it assumes
/// allowed before the server's SETTINGS reach it: 100 for hyper (tonic, ztunnel), grpc-go
/// (pilot-agent) and nghttp2. None of them may be refused: a cap below that would turn a
/// node's restart into REFUSED_STREAM errors.
#[tokio::test]
async fn a_burst_on_a_fresh_connection_is_never_refused() {
    let ca = start_ca().await;
    // Raw h2 assumes no limit at all; the clients above assume 100.
    let client = h2_client_with(&ca, false, h2::client::Builder::new().initial_max_send_streams(100)).await;
    let csr = good_csr();
    // One poll of join_all opens every stream the client believes it may, before its
    // connection task has read the server's SETTINGS: on this test's current-thread runtime
    // that task runs only once this one yields.
    let calls = (0..250).map(|_| send(&client, app(&csr), None));
    let results = futures::future::join_all(calls).await;
    let failed: Vec<_> = results.iter().filter(|r| !matches!(r, Ok(s) if s.code() == Code::Ok)).collect();
    assert!(failed.is_empty(), "{} of 250 failed, the first: {:?}", failed.len(), failed.first());
}

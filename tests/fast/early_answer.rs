//! A unary call is answered once its message has arrived, before the client
//! ends its half of the stream, as gRPC-Go (istiod) answers. ztunnel's CA
//! client leaves Nagle's algorithm on and sends the empty END_STREAM DATA
//! frame in a write of its own; a server that waited for it waited for its
//! own delayed ACK first (about 40 ms a certificate).

use crate::support;

use meshroot::pb::{IstioCertificateRequest, IstioCertificateResponse};
use meshroot::pki::KeyAlgorithm;
use prost::Message;
use std::time::{Duration, Instant};
use support::*;

/// One length-prefixed CreateCertificate message for `identity`.
fn framed_request(identity: &str) -> bytes::Bytes {
    let (_, csr) = csr_for(identity, KeyAlgorithm::EcdsaP256);
    let message = IstioCertificateRequest { csr, validity_duration: 0, metadata: None }.encode_to_vec();
    let mut out = vec![0];
    out.extend((message.len() as u32).to_be_bytes());
    out.extend(message);
    out.into()
}

/// Opens a call and sends its message without END_STREAM.
async fn open_call(
    client: &h2::client::SendRequest<bytes::Bytes>,
    body: bytes::Bytes,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let req = http::Request::builder()
        .method("POST")
        .uri("https://localhost/istio.v1.auth.IstioCertificateService/CreateCertificate")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", bearer(DEV_TOKEN))
        .header("clusterid", "Kubernetes")
        .body(())
        .unwrap();
    let (response, mut stream) = client.clone().ready().await.unwrap().send_request(req, false).unwrap();
    stream.reserve_capacity(body.len());
    stream.send_data(body, false).unwrap();
    (response, stream)
}

/// Reads the whole response: its gRPC status and message.
async fn read_response(response: h2::client::ResponseFuture) -> (String, Option<IstioCertificateResponse>) {
    let response = response.await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    if let Some(status) = response.headers().get("grpc-status") {
        return (status.to_str().unwrap().to_string(), None);
    }
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    let status = trailers.get("grpc-status").expect("grpc-status").to_str().unwrap().to_string();
    let message = bytes.get(5..).map(|m| IstioCertificateResponse::decode(m).unwrap());
    (status, message)
}

/// The leaf's URI SANs, parsed from the response's chain.
fn leaf_uris(response: &IstioCertificateResponse) -> Vec<String> {
    let der = meshroot::pki::pem::decode_one(response.cert_chain[0].as_bytes(), "CERTIFICATE", 1 << 16).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = leaf.subject_alternative_name().unwrap().expect("a SAN extension");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_call_is_answered_before_the_client_ends_its_stream() {
    let ca = start_ca().await;
    let client = h2_client(&ca, true).await;
    let (response, mut stream) = open_call(&client, framed_request(DEFAULT_ID)).await;
    // END_STREAM is never sent: a server that waits for it never answers.
    let (status, message) = tokio::time::timeout(Duration::from_secs(10), read_response(response))
        .await
        .expect("answered without END_STREAM");
    assert_eq!(status, "0");
    assert_eq!(leaf_uris(&message.expect("a response message")), [DEFAULT_ID]);
    // The client's late END_STREAM meets a stream the server has closed
    // (RST_STREAM NO_ERROR, as gRPC-Go sends); the connection stays usable.
    let _ = stream.send_data(bytes::Bytes::new(), true);
    let (response, mut stream) = open_call(&client, framed_request(DEFAULT_ID)).await;
    stream.send_data(bytes::Bytes::new(), true).unwrap();
    let (status, message) = read_response(response).await;
    assert_eq!(status, "0");
    assert_eq!(leaf_uris(&message.unwrap()), [DEFAULT_ID]);
}

#[tokio::test]
async fn a_refusal_is_answered_before_the_client_ends_its_stream_too() {
    let ca = start_ca().await;
    let client = h2_client(&ca, true).await;
    let (response, _stream) = open_call(&client, framed_request("spiffe://cluster.local/ns/other/sa/x")).await;
    let (status, _) = tokio::time::timeout(Duration::from_secs(10), read_response(response))
        .await
        .expect("answered without END_STREAM");
    // Asking for another identity is refused (Unauthenticated: "not authorized").
    assert_eq!(status, (tonic::Code::Unauthenticated as i32).to_string());
}

#[tokio::test]
async fn a_message_split_across_frames_is_answered_once_complete() {
    let ca = start_ca().await;
    let client = h2_client(&ca, true).await;
    let body = framed_request(DEFAULT_ID);
    let (head, tail) = (body.slice(..3), body.slice(3..));
    let (response, mut stream) = open_call(&client, head).await;
    // Not answered on a partial message.
    let mut response = Box::pin(read_response(response));
    assert!(tokio::time::timeout(Duration::from_millis(300), &mut response).await.is_err());
    stream.send_data(tail, false).unwrap();
    let (status, message) =
        tokio::time::timeout(Duration::from_secs(10), response).await.expect("answered once complete");
    assert_eq!(status, "0");
    assert_eq!(leaf_uris(&message.unwrap()), [DEFAULT_ID]);
}

/// The round trip of a ztunnel-style call (Nagle on, END_STREAM in a write
/// of its own), printed as a figure; waiting for END_STREAM made it about
/// 40 ms. Run with `--nocapture` to see it.
#[tokio::test]
async fn round_trip_of_a_call_whose_end_stream_comes_in_a_second_write() {
    let ca = start_ca().await;
    let client = h2_client(&ca, true).await;
    let mut times = Vec::new();
    for _ in 0..20 {
        let body = framed_request(DEFAULT_ID);
        let started = Instant::now();
        let (response, mut stream) = open_call(&client, body).await;
        // A write of its own, as ztunnel's client makes it.
        tokio::task::yield_now().await;
        let _ = stream.send_data(bytes::Bytes::new(), true);
        let (status, _) = read_response(response).await;
        times.push(started.elapsed());
        assert_eq!(status, "0");
    }
    let in_order = times.clone();
    times.sort();
    eprintln!(
        "ztunnel-style round trip over 20 calls: median {:.2} ms, max {:.2} ms (CSR generated outside the timing); in order: {in_order:?}",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
}

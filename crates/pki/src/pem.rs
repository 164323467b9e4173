//! Bounded PEM decoding and LF-only encoding, on top of the `pem` crate.

use super::error::{PkiError, Result};
use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

/// PEM label of an X.509 certificate.
pub const CERTIFICATE: &str = "CERTIFICATE";
/// PEM label of a PKCS#10 certificate signing request.
pub const CERTIFICATE_REQUEST: &str = "CERTIFICATE REQUEST";

/// One decoded PEM block. The contents are wiped on drop, since a block may
/// hold a private key.
pub struct PemBlock {
    /// The label from the `-----BEGIN ...-----` line, as written: not yet made safe to echo.
    pub label: String,
    /// The decoded contents; never empty.
    pub der: Zeroizing<Vec<u8>>,
}

/// Decodes every PEM block in `input`, refusing input over `limit` bytes.
pub fn decode_all(input: &[u8], limit: usize) -> Result<Vec<PemBlock>> {
    if input.len() > limit {
        return Err(PkiError::TooLarge { size: input.len(), limit });
    }
    // The pem crate quotes the input in some errors (mismatched labels): cut
    // and clean it, since the message goes back to the client and the log.
    let blocks = pem::parse_many(input).map_err(|e| PkiError::Pem(printable(&e.to_string(), 160)))?;
    if blocks.is_empty() {
        return Err(PkiError::Pem("no PEM block found".into()));
    }
    let blocks: Vec<PemBlock> = blocks
        .into_iter()
        .map(|p| PemBlock { label: p.tag().to_string(), der: Zeroizing::new(p.into_contents()) })
        .collect();
    if blocks.iter().any(|b| b.der.is_empty()) {
        return Err(PkiError::Pem("empty PEM block".into()));
    }
    Ok(blocks)
}

/// Decodes exactly one PEM block with the given label.
pub fn decode_one(input: &[u8], label: &'static str, limit: usize) -> Result<Zeroizing<Vec<u8>>> {
    if input.len() > limit {
        return Err(PkiError::TooLarge { size: input.len(), limit });
    }
    // CSRs are decoded on every request: a lone block in canonical form
    // (nothing around it, line breaks only) takes a fast path; anything else,
    // or anything it cannot decode, takes the general path below, which
    // decides and gives the precise errors.
    if label == CERTIFICATE_REQUEST
        && let Some(der) = decode_lone_csr(input)
    {
        return Ok(Zeroizing::new(der));
    }
    let mut blocks = decode_all(input, limit)?;
    if blocks.len() != 1 {
        return Err(PkiError::PemCount(blocks.len()));
    }
    let block = blocks.remove(0);
    if block.label != label {
        return Err(PkiError::PemLabel { expected: label, found: printable(&block.label, 64) });
    }
    Ok(block.der)
}

/// The DER of `input` if it is exactly one `CERTIFICATE REQUEST` block whose body is lines of
/// whole base64 quads (LF or CRLF), with canonical padding on the last line only; `None` for
/// anything else.
fn decode_lone_csr(input: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE REQUEST-----";
    const END: &[u8] = b"-----END CERTIFICATE REQUEST-----";
    let body = input.trim_ascii().strip_prefix(BEGIN)?.strip_suffix(END)?;
    // The line breaks ending the BEGIN line and the last body line; any other empty line is a
    // blank line inside the body, an RFC 1421 header separator to the pem crate, which the
    // general path judges.
    let body = body.strip_prefix(b"\r\n").or_else(|| body.strip_prefix(b"\n")).unwrap_or(body);
    let body = body.strip_suffix(b"\r\n").or_else(|| body.strip_suffix(b"\n")).unwrap_or(body);
    let mut der = Vec::with_capacity((body.len() / 4).saturating_mul(3));
    let mut padded = false;
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // Padding ends the data: a line after it, a blank line, or a line of partial quads is for
        // the general path.
        if padded || line.is_empty() || line.len() % 4 != 0 {
            return None;
        }
        padded = line.ends_with(b"=");
        // The decoder refuses anything but the base64 alphabet (a dash, a space) and non-canonical padding.
        base64::engine::general_purpose::STANDARD.decode_vec(line, &mut der).ok()?;
    }
    (!der.is_empty()).then_some(der)
}

/// Text from the input made safe to echo: at most `max` characters, control
/// characters (newlines included) replaced.
pub fn printable(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// Decodes one or more certificates; any other block is an error.
pub fn decode_certificates(input: &[u8], limit: usize) -> Result<Vec<CertificateDer<'static>>> {
    decode_all(input, limit)?
        .into_iter()
        .map(|b| {
            if b.label == CERTIFICATE {
                Ok(CertificateDer::from(b.der.to_vec()))
            } else {
                Err(PkiError::PemLabel { expected: CERTIFICATE, found: printable(&b.label, 64) })
            }
        })
        .collect()
}

/// Encodes DER as PEM: 64-column lines, LF endings, trailing newline. Every issued certificate
/// is encoded here, so the base64 is written straight into the output (the `pem` crate's encoder
/// took about 17,000 instructions for a workload certificate; this, about a fifth of that).
pub fn encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    const COLUMNS: usize = 64;
    // Three bytes make four characters; one quad of characters is 48 bytes of a 64-column line.
    let line_bytes = COLUMNS / 4 * 3;
    let lines = der.len().div_ceil(line_bytes);
    let body_len = der.len().div_ceil(3).saturating_mul(4).saturating_add(lines);
    let mut out = String::with_capacity(body_len.saturating_add(label.len().saturating_mul(2)).saturating_add(32));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in der.chunks(line_bytes) {
        base64::engine::general_purpose::STANDARD.encode_string(chunk, &mut out);
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Encodes a DER certificate as a `CERTIFICATE` PEM block.
pub fn encode_certificate(der: &[u8]) -> String {
    encode(CERTIFICATE, der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_exactly_as_the_pem_crate_does() {
        let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        for len in (0..200).chain([1000, 4096]) {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let expected = pem::encode_config(&pem::Pem::new(CERTIFICATE, der.clone()), config);
            assert_eq!(encode(CERTIFICATE, &der), expected, "{len} bytes");
        }
    }

    #[test]
    fn round_trips_and_counts_blocks() {
        let a = encode(CERTIFICATE, &[1, 2, 3, 4]);
        let b = encode(CERTIFICATE, &[5; 100]);
        assert!(a.ends_with("-----END CERTIFICATE-----\n"));
        assert!(!a.contains('\r'));
        let both = format!("{a}{b}");
        let blocks = decode_all(both.as_bytes(), 10_000).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(*blocks[0].der, vec![1, 2, 3, 4]);
        assert_eq!(*blocks[1].der, vec![5; 100]);
        assert!(b.lines().all(|l| l.len() <= 64));
    }

    /// Found by the handler fuzzer: a mismatched END label swallowed the
    /// base64 after it, and the error echoed it, newlines and all.
    #[test]
    fn errors_never_echo_raw_input() {
        let body = "MIIB\nAAAA\n".repeat(50);
        let input = format!("-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQU{body}-----\n");
        let e = decode_one(input.as_bytes(), CERTIFICATE_REQUEST, 1 << 16).err().unwrap().to_string();
        assert!(!e.chars().any(char::is_control) && e.chars().count() < 300, "{e:?}");
        let label =
            format!("-----BEGIN X\u{7}{}-----\nAAAA\n-----END X\u{7}{}-----\n", "Y".repeat(500), "Y".repeat(500));
        let e = decode_one(label.as_bytes(), CERTIFICATE_REQUEST, 1 << 16).err().unwrap().to_string();
        assert!(!e.chars().any(char::is_control) && e.chars().count() < 300, "{e:?}");
    }

    #[test]
    fn refuses_oversized_input() {
        let a = encode(CERTIFICATE, &[1; 2000]);
        assert!(matches!(decode_all(a.as_bytes(), 100), Err(PkiError::TooLarge { .. })));
    }

    #[test]
    fn refuses_wrong_label_and_several_blocks() {
        let a = encode("PUBLIC KEY", &[1, 2, 3]);
        assert!(matches!(decode_one(a.as_bytes(), CERTIFICATE_REQUEST, 1000), Err(PkiError::PemLabel { .. })));
        let two = format!("{}{}", encode(CERTIFICATE_REQUEST, &[1]), encode(CERTIFICATE_REQUEST, &[2]));
        assert!(matches!(decode_one(two.as_bytes(), CERTIFICATE_REQUEST, 1000), Err(PkiError::PemCount(2))));
        let mixed = format!("{}{}", encode(CERTIFICATE, &[1]), encode("PRIVATE KEY", &[2]));
        assert!(decode_certificates(mixed.as_bytes(), 1000).is_err());
    }

    #[test]
    fn the_csr_fast_path_agrees_with_the_general_path() {
        let one = encode(CERTIFICATE_REQUEST, &[7; 300]);
        assert_eq!(*decode_one(one.as_bytes(), CERTIFICATE_REQUEST, 10_000).unwrap(), vec![7; 300]);
        let crlf = one.replace('\n', "\r\n");
        assert_eq!(*decode_one(crlf.as_bytes(), CERTIFICATE_REQUEST, 10_000).unwrap(), vec![7; 300]);
        // Whatever the fast path does not take falls back to the precise errors.
        let two = format!("{one}{one}");
        assert!(matches!(decode_one(two.as_bytes(), CERTIFICATE_REQUEST, 10_000), Err(PkiError::PemCount(2))));
        let key = encode("PRIVATE KEY", &[1; 10]);
        assert!(matches!(decode_one(key.as_bytes(), CERTIFICATE_REQUEST, 10_000), Err(PkiError::PemLabel { .. })));
        let bad = "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n";
        assert!(decode_one(bad.as_bytes(), CERTIFICATE_REQUEST, 10_000).is_err());
        let empty = "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n";
        assert!(decode_one(empty.as_bytes(), CERTIFICATE_REQUEST, 10_000).is_err());
        assert!(matches!(decode_one(one.as_bytes(), CERTIFICATE_REQUEST, 100), Err(PkiError::TooLarge { .. })));
    }

    #[test]
    fn the_csr_fast_path_takes_only_a_lone_canonical_block() {
        let one = encode(CERTIFICATE_REQUEST, &[7; 300]);
        assert_eq!(decode_lone_csr(one.as_bytes()), Some(vec![7; 300]));
        assert_eq!(decode_lone_csr(one.replace('\n', "\r\n").as_bytes()), Some(vec![7; 300]));
        // Everything else is left to the general path, which gives the verdict.
        let explained = format!("a CSR for workload x\n{one}");
        let spaced = one.replacen('\n', "\n ", 2);
        let body_start = one.find('\n').unwrap() + 1;
        let mut lowered = one.clone();
        lowered.replace_range(body_start..body_start + 1, "*");
        let two = format!("{one}{one}");
        // Padding in the middle, or a line cut inside a quad, is left to the general path too.
        let padded_early = "-----BEGIN CERTIFICATE REQUEST-----\nAQ==\nAQID\n-----END CERTIFICATE REQUEST-----\n";
        let split_quad = "-----BEGIN CERTIFICATE REQUEST-----\nAQI\nD\n-----END CERTIFICATE REQUEST-----\n";
        let blank_inside = "-----BEGIN CERTIFICATE REQUEST-----\nAQID\n\nAQID\n-----END CERTIFICATE REQUEST-----\n";
        let blank_before_end = "-----BEGIN CERTIFICATE REQUEST-----\nAQID\n\n-----END CERTIFICATE REQUEST-----\n";
        for refused in [blank_inside, blank_before_end] {
            assert!(decode_all(refused.as_bytes(), 10_000).is_err(), "the general path refuses {refused:?}");
            assert_eq!(decode_lone_csr(refused.as_bytes()), None, "{refused:?}");
        }
        assert!(decode_all(padded_early.as_bytes(), 10_000).is_err(), "the general path refuses it as well");
        for other in [explained.as_str(), spaced.as_str(), lowered.as_str(), two.as_str(), padded_early, split_quad] {
            assert_eq!(decode_lone_csr(other.as_bytes()), None, "{other:?}");
        }
        // A last base64 digit with bits past the data set is not canonical.
        let short = encode(CERTIFICATE_REQUEST, &[1]);
        let noncanonical = short.replace("AQ==", "AR==");
        assert_ne!(short, noncanonical);
        assert_eq!(decode_lone_csr(noncanonical.as_bytes()), None);
        // What the fast path accepts, the general path accepts the same way.
        for len in [1usize, 2, 3, 47, 48, 49, 64, 65, 300, 1000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let pem = encode(CERTIFICATE_REQUEST, &data);
            let general = decode_all(pem.as_bytes(), 10_000).unwrap();
            assert_eq!(decode_lone_csr(pem.as_bytes()).as_deref(), Some(general[0].der.as_slice()), "{len}");
        }
    }

    #[test]
    fn refuses_garbage() {
        assert!(decode_all(b"hello", 100).is_err());
        assert!(decode_all(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", 100).is_err());
        assert!(decode_all(b"-----BEGIN CERTIFICATE-----\nAAAA\n", 100).is_err());
        assert!(decode_all(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", 100).is_err());
    }
}

//! Bounded PEM decoding and LF-only encoding, on top of the `pem` crate.

use super::error::{PkiError, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
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
    // CSRs are decoded on every request: a single CSR block takes
    // rustls-pki-types' decoder, several times faster than the general
    // path below, which gives the precise errors for everything else.
    if label == CERTIFICATE_REQUEST
        && count(input, b"-----BEGIN ") == 1
        && let Ok(der) = <CertificateSigningRequestDer<'static> as PemObject>::from_pem_slice(input)
        && !der.as_ref().is_empty()
    {
        return Ok(Zeroizing::new(der.as_ref().to_vec()));
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

/// Text from the input made safe to echo: at most `max` characters, control
/// characters (newlines included) replaced.
pub fn printable(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
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

/// Encodes DER as PEM: 64-column lines, LF endings, trailing newline.
pub fn encode(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

/// Encodes a DER certificate as a `CERTIFICATE` PEM block.
pub fn encode_certificate(der: &[u8]) -> String {
    encode(CERTIFICATE, der)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn refuses_garbage() {
        assert!(decode_all(b"hello", 100).is_err());
        assert!(decode_all(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", 100).is_err());
        assert!(decode_all(b"-----BEGIN CERTIFICATE-----\nAAAA\n", 100).is_err());
        assert!(decode_all(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", 100).is_err());
    }
}

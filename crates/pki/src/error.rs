//! Errors of the pure PKI layer. Messages never carry key material.

use thiserror::Error;

/// Why a PKI operation failed. Every message is safe to log and to send back to a client:
/// none carries key material.
#[derive(Debug, Error)]
pub enum PkiError {
    /// An input was over its size limit, and was refused before any parsing.
    #[error("input is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Length of the input, in bytes.
        size: usize,
        /// The largest length accepted, in bytes.
        limit: usize,
    },
    /// The input is not usable PEM: it does not parse, holds no block, or holds an empty one.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// A PEM block has the wrong label, such as a private key where a certificate belongs.
    #[error("expected PEM label {expected}, found {found}")]
    PemLabel {
        /// The label that was required.
        expected: &'static str,
        /// The label found in the input.
        found: String,
    },
    /// The input must hold exactly one PEM block; carries how many it held.
    #[error("expected exactly one PEM block, found {0}")]
    PemCount(usize),
    /// DER that does not parse (a certificate, CSR, public key or extension), or trailing bytes after it.
    #[error("invalid DER: {0}")]
    Der(String),
    /// A key the key policy refuses (algorithm, curve or size), an encrypted private key, or an unknown
    /// algorithm name.
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    /// A private key block whose contents do not load as a supported key in the encoding its label names.
    #[error("could not load the private key (wrong format or unsupported algorithm)")]
    KeyLoad,
    /// The private key given with a CA certificate is not the key of that certificate.
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    /// A CSR's signature does not verify, so the requester has not shown that it holds the key.
    #[error("CSR signature does not verify: {0}")]
    CsrSignature(String),
    /// A CSR signed with a refused algorithm (SHA-1, MD5, or one not known), or one that does not fit its key.
    #[error("unsupported signature algorithm {0}")]
    UnsupportedSignature(String),
    /// A certificate used as a CA lacks CA:TRUE or keyCertSign, or has a subject that meshroot cannot
    /// sign under.
    #[error("not a CA certificate: {0}")]
    NotCa(String),
    /// A CA certificate is not valid at the time of use: not yet valid, or expired.
    #[error("certificate is not valid at this time (valid {not_before} to {not_after})")]
    Expired {
        /// Start of the certificate's validity, in `OffsetDateTime`'s display form.
        not_before: String,
        /// End of the certificate's validity, in `OffsetDateTime`'s display form.
        not_after: String,
    },
    /// Not a valid SPIFFE ID, or not of Istio's `spiffe://<td>/ns/<ns>/sa/<sa>` form; says which rule failed.
    #[error("invalid SPIFFE ID: {0}")]
    Spiffe(String),
    /// Building, encoding or signing a certificate failed, or the system random number generator did.
    #[error("signing failed: {0}")]
    Signing(String),
    /// A proof after signing failed: a probe certificate from an authority or a chain, or an issued
    /// certificate, did not match its signer or did not verify.
    #[error("the signing authority failed its self-check: {0}")]
    SelfCheck(String),
    /// A well-formed input or request that is not acceptable: a non-positive lifetime, a repeated
    /// extension, a chain that does not verify, and the like.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A computed date is outside the range `OffsetDateTime` can hold; names the date, e.g. "the leaf's NotBefore".
    #[error("{0} is out of the range of dates a certificate can hold")]
    TimeOutOfRange(&'static str),
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        // rcgen errors describe structure, never key bytes.
        PkiError::Signing(e.to_string())
    }
}

/// The result of a PKI operation.
pub type Result<T> = std::result::Result<T, PkiError>;

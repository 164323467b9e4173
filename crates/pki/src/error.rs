//! Errors of the pure PKI layer. Messages never carry key material.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PkiError {
    #[error("input is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid PEM: {0}")]
    Pem(String),
    #[error("expected PEM label {expected}, found {found}")]
    PemLabel { expected: &'static str, found: String },
    #[error("expected exactly one PEM block, found {0}")]
    PemCount(usize),
    #[error("invalid DER: {0}")]
    Der(String),
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    #[error("could not load the private key (wrong format or unsupported algorithm)")]
    KeyLoad,
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    #[error("CSR signature does not verify: {0}")]
    CsrSignature(String),
    #[error("unsupported signature algorithm {0}")]
    UnsupportedSignature(String),
    #[error("not a CA certificate: {0}")]
    NotCa(String),
    #[error("certificate is not valid at this time (valid {not_before} to {not_after})")]
    Expired { not_before: String, not_after: String },
    #[error("invalid SPIFFE ID: {0}")]
    Spiffe(String),
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("the signing authority failed its self-check: {0}")]
    SelfCheck(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0} is out of the range of dates a certificate can hold")]
    TimeOutOfRange(&'static str),
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        // rcgen errors describe structure, never key bytes.
        PkiError::Signing(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, PkiError>;

//! Editing a certificate meshroot has just signed, where rcgen cannot write
//! a field (a verbatim subject, an OID with arcs over 64 bits), and signing
//! the edited TBSCertificate again with the same key and algorithm.

use super::authority::Authority;
use super::error::{PkiError, Result};
use der::asn1::{Any, BitString};
use der::{Decode, Encode};
use rcgen::SigningKey;
use rustls_pki_types::CertificateDer;

/// Why an edit of a certificate's fields failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum EditError {
    /// A field does not decode or encode.
    #[error(transparent)]
    Der(#[from] der::Error),
    /// The certificate is not laid out as meshroot signs it; names the structure.
    #[error("unexpected {0} layout")]
    Layout(&'static str),
}

/// Decodes `cert`'s TBSCertificate fields, lets `edit` change them, and
/// signs the result with `authority`. `what` names the edit in errors.
pub(super) fn resign(
    cert: &CertificateDer<'_>,
    authority: &Authority,
    what: &str,
    edit: impl FnOnce(&mut Vec<Any>) -> std::result::Result<(), EditError>,
) -> Result<CertificateDer<'static>> {
    let der_err = |e: der::Error| PkiError::Signing(format!("{what}: {e}"));
    let parts: Vec<Any> = Vec::from_der(cert.as_ref()).map_err(der_err)?;
    let [tbs, algorithm, _signature] = parts.as_slice() else {
        return Err(PkiError::Signing(format!("{what}: unexpected certificate structure")));
    };
    let mut fields: Vec<Any> = Vec::from_der(&tbs.to_der().map_err(der_err)?).map_err(der_err)?;
    edit(&mut fields).map_err(|why| PkiError::Signing(format!("{what}: {why}")))?;
    let tbs = fields.to_der().map_err(der_err)?;
    let signature = authority.key().sign(&tbs)?;
    let cert = vec![
        Any::from_der(&tbs).map_err(der_err)?,
        algorithm.clone(),
        Any::encode_from(&BitString::from_bytes(&signature).map_err(der_err)?).map_err(der_err)?,
    ];
    Ok(CertificateDer::from(cert.to_der().map_err(der_err)?))
}

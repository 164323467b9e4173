//! Why a CreateCertificate failed, and how each failure maps to a gRPC
//! status and to istiod's metrics.

use super::rate_limit::Exceeded;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::SignErrorLabels;
use tonic::{Code, Status};

/// Why a CreateCertificate failed. The text is the reason the client is told and the audit log records.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The caller could not be authenticated.
    Unauthenticated(String),
    /// The caller is known but may not have what it asked for.
    Forbidden(String),
    /// The CSR is malformed, unsigned, or uses a refused key or algorithm.
    BadCsr(String),
    /// The request is malformed in some other way (metadata).
    BadRequest(String),
    /// Could not decide now (for example the API server is unreachable). Retryable.
    Unavailable(String),
    /// No usable signer (none loaded yet, or expired). Retryable.
    NotReady(String),
    /// Signing failed unexpectedly.
    Internal(String),
    /// Over a per-identity or per-node rate limit. Retryable, later.
    RateLimited(Exceeded),
}

/// The gRPC retry-pushback header: how long a client should wait.
pub const RETRY_PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

impl Failure {
    /// The gRPC status code. `Forbidden` is `Unauthenticated` too; a rate limit is `ResourceExhausted`.
    pub fn code(&self) -> Code {
        match self {
            Failure::Unauthenticated(_) | Failure::Forbidden(_) => Code::Unauthenticated,
            Failure::BadCsr(_) | Failure::BadRequest(_) => Code::InvalidArgument,
            Failure::Unavailable(_) | Failure::NotReady(_) => Code::Unavailable,
            Failure::Internal(_) => Code::Internal,
            Failure::RateLimited(_) => Code::ResourceExhausted,
        }
    }

    /// The name of [`Failure::code`], as the audit log and the latency metric's `code` label show it.
    pub fn code_name(&self) -> &'static str {
        match self.code() {
            Code::Unauthenticated => "Unauthenticated",
            Code::InvalidArgument => "InvalidArgument",
            Code::Unavailable => "Unavailable",
            Code::ResourceExhausted => "ResourceExhausted",
            _ => "Internal",
        }
    }

    /// The failure's detail, without the category prefix the client sees.
    pub fn reason(&self) -> std::borrow::Cow<'_, str> {
        let text = match self {
            Failure::Unauthenticated(m)
            | Failure::Forbidden(m)
            | Failure::BadCsr(m)
            | Failure::BadRequest(m)
            | Failure::Unavailable(m)
            | Failure::NotReady(m)
            | Failure::Internal(m) => m,
            Failure::RateLimited(e) => return e.to_string().into(),
        };
        text.into()
    }

    /// The gRPC status the client gets, `<category>: <reason>`; when rate limited, with the
    /// [`RETRY_PUSHBACK_HEADER`] hint in milliseconds (at least 1).
    pub fn to_status(&self) -> Status {
        let prefix = match self {
            Failure::Unauthenticated(_) => "authentication failed",
            Failure::Forbidden(_) => "not authorized",
            Failure::BadCsr(_) => "invalid CSR",
            Failure::BadRequest(_) => "invalid request",
            Failure::Unavailable(_) => "temporarily unavailable",
            Failure::NotReady(_) => "CA not ready",
            Failure::Internal(_) => "certificate signing failed",
            Failure::RateLimited(_) => "rate limited",
        };
        let mut status = Status::new(self.code(), format!("{prefix}: {}", self.reason()));
        if let Failure::RateLimited(e) = self {
            let millis = e.retry_after.as_millis().max(1).to_string();
            if let Ok(value) = millis.parse() {
                status.metadata_mut().insert(RETRY_PUSHBACK_HEADER, value);
            }
        }
        status
    }

    /// Counts the failure the way istiod does.
    pub fn record(&self, metrics: &Metrics) {
        let sign_err = |error| metrics.csr_sign_err_count.get_or_create(&SignErrorLabels { error }).inc();
        match self {
            Failure::Unauthenticated(_) => metrics.authentication_failure_count.inc(),
            Failure::Forbidden(_) => metrics.id_extraction_err_count.inc(),
            Failure::BadCsr(_) => {
                metrics.csr_parsing_err_count.inc();
                sign_err("CSR_ERROR");
            }
            Failure::BadRequest(_) => sign_err("INVALID_REQUEST"),
            Failure::Unavailable(_) => sign_err("UNAVAILABLE"),
            Failure::NotReady(_) => sign_err("CA_NOT_READY"),
            Failure::Internal(_) => sign_err("CERT_GEN_ERROR"),
            Failure::RateLimited(_) => sign_err("RATE_LIMITED"),
        }
    }
}

/// Attacker-controlled text echoed in a message is cut short and stripped
/// of control characters.
pub fn quote_input(s: &str) -> String {
    const MAX: usize = 200;
    let mut out: String = s.chars().take(MAX).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect();
    if s.chars().count() > MAX {
        out.push('…');
    }
    format!("{out:?}")
}

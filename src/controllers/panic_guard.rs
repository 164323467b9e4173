//! Signing one object under a panic guard: a panic while signing becomes
//! that object's terminal failure, and the controller goes on with the
//! others instead of dying on (and, after every restart, again on) the
//! same poison object.

use super::signing::{FailureReason, Outcome};
use crate::supervise::panic_message;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::ControllerLabels;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// The fixed status message for a request whose signing panicked; the
/// panic text stays in the log, since it could contain request data.
pub const INTERNAL_ERROR_MESSAGE: &str = "meshroot failed internally while signing this request; see its logs";

/// Runs one controller's signing under `catch_unwind`, logging and counting each panic.
#[derive(Clone)]
pub struct PanicGuard {
    controller: &'static str,
    metrics: Arc<Metrics>,
    #[cfg(feature = "testing")]
    hook: Option<fn(&str)>,
}

impl std::fmt::Debug for PanicGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PanicGuard").field("controller", &self.controller).finish_non_exhaustive()
    }
}

impl PanicGuard {
    /// A guard for `controller`, the name its panics are logged and counted under.
    pub fn new(controller: &'static str, metrics: Arc<Metrics>) -> Self {
        Self {
            controller,
            metrics,
            #[cfg(feature = "testing")]
            hook: None,
        }
    }

    /// Tests only (feature `testing`): `hook` runs inside the guard with the object's name just
    /// before it is signed, so a test can make signing panic for one object.
    #[cfg(feature = "testing")]
    pub fn with_hook(mut self, hook: fn(&str)) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Signs `object` with `sign` (synchronous); a panic becomes
    /// `Failed { reason: InternalError }` with a fixed message.
    pub fn sign(&self, object: &str, sign: impl FnOnce() -> Outcome) -> Outcome {
        let run = || {
            #[cfg(feature = "testing")]
            if let Some(hook) = self.hook {
                hook(object);
            }
            sign()
        };
        // Signing only reads shared state (snapshots and caches), so nothing
        // is left half-updated by the unwind.
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(outcome) => outcome,
            Err(payload) => {
                tracing::error!(
                    controller = self.controller,
                    object,
                    panic = %panic_message(payload.as_ref()),
                    "signing panicked; the request is failed and the controller goes on"
                );
                self.metrics.reconcile_panics.get_or_create(&ControllerLabels { controller: self.controller }).inc();
                Outcome::Failed { reason: FailureReason::InternalError, message: INTERNAL_ERROR_MESSAGE.to_string() }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_fixed_failure_and_is_counted() {
        let metrics = Metrics::new();
        let guard = PanicGuard::new("test", metrics.clone());
        let outcome = guard.sign("ns/poison", || panic!("secret request data"));
        match outcome {
            Outcome::Failed { reason, message } => {
                assert_eq!(reason, FailureReason::InternalError);
                assert_eq!(reason.to_string(), "InternalError");
                assert_eq!(message, INTERNAL_ERROR_MESSAGE);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(guard.sign("ns/fine", || Outcome::Pending("later".into())), Outcome::Pending(_)));
        assert_eq!(metrics.reconcile_panics.get_or_create(&ControllerLabels { controller: "test" }).get(), 1);
    }
}

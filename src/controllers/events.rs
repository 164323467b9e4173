//! Kubernetes Events about the objects meshroot works on. Publishing is
//! best effort: a failure is logged, never fatal.

use crate::k8s::error_summary;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// The API server refuses Event notes over 1 KiB.
const MAX_NOTE_BYTES: usize = 1024;

/// Publishes Events as controller `meshroot`, reporting this replica.
pub struct EventSink {
    recorder: Recorder,
}

impl EventSink {
    /// `instance` names this replica (the pod).
    pub fn new(client: kube::Client, instance: String) -> Self {
        Self { recorder: Recorder::new(client, Reporter { controller: "meshroot".into(), instance: Some(instance) }) }
    }

    /// Publishes an Event (action `Sign`) about `regarding`; a failure is logged and dropped.
    /// `note` should already be cut with [`note`].
    pub async fn publish(&self, regarding: &ObjectReference, type_: EventType, reason: &str, note: String) {
        let event = Event { type_, reason: reason.into(), note: Some(note), action: "Sign".into(), secondary: None };
        if let Err(e) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(reason, error = %error_summary(&e), "could not publish an Event");
        }
    }
}

/// `text`, cut to what an Event note may hold.
pub fn note(mut text: String) -> String {
    if text.len() > MAX_NOTE_BYTES {
        let mut end = MAX_NOTE_BYTES.saturating_sub(3);
        while !text.is_char_boundary(end) {
            end = end.saturating_sub(1);
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        assert_eq!(note("short".into()), "short");
        let cut = note("é".repeat(1000));
        assert!(cut.len() <= MAX_NOTE_BYTES && cut.ends_with("..."));
    }
}

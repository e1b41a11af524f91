//! The audit trail: one event per step of an upload's life, each moving its counter in
//! [`Metrics`]. Uploads are named by `s3object_id`; their S3 key is not logged, as the upstream
//! builds it around the (secret) business id.
//!
//! A step caused by a request (issued, confirmed, rejected) is an [`AuditEvent`] put on the
//! response: the request's one log line carries it (see [`super::access`]), under the target
//! `kizen_gateway::audit` instead of `kizen_gateway::access`. Should no line be written for the
//! request (the client hung up while a confirmation went on), the event logs itself when it is
//! dropped: the trail never loses a step. An expiry, which no request causes, is logged alone.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use time::OffsetDateTime;
use uuid::Uuid;

use super::metrics::{Metrics, ReasonLabels};
use crate::domain::IssuedUpload;

/// What happened to the upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditStep {
    /// Presigned for the user (`upload_issued`).
    Issued {
        /// The upload's Kizen `source`.
        source: String,
        /// The last instant a confirmation is accepted.
        window_end: OffsetDateTime,
    },
    /// Kizen accepted its confirmation (`upload_confirmed`).
    Confirmed,
    /// A confirmation was refused, by the gateway or by Kizen (`upload_rejected`).
    Rejected {
        /// The problem code, or `upstream_rejected_input` for a Kizen 4xx.
        reason: &'static str,
    },
}

impl AuditStep {
    /// The `event` field of the line.
    pub fn event(&self) -> &'static str {
        match self {
            Self::Issued { .. } => "upload_issued",
            Self::Confirmed => "upload_confirmed",
            Self::Rejected { .. } => "upload_rejected",
        }
    }
}

/// One step of an upload caused by a request, on its way to that request's log line.
#[derive(Debug, Clone)]
pub struct AuditEvent(Arc<Pending>);

#[derive(Debug)]
struct Pending {
    step: AuditStep,
    s3object_id: Uuid,
    /// For the line written alone; the request's line names the user itself.
    user: String,
    request_id: Arc<str>,
    written: AtomicBool,
}

impl AuditEvent {
    fn new(step: AuditStep, s3object_id: Uuid, user: &str, request_id: &Arc<str>) -> Self {
        Self(Arc::new(Pending {
            step,
            s3object_id,
            user: user.to_owned(),
            request_id: request_id.clone(),
            written: AtomicBool::new(false),
        }))
    }

    /// The step, for the request's line; from now on the event is that line's to write.
    pub fn take(&self) -> (&AuditStep, Uuid) {
        self.0.written.store(true, Ordering::Relaxed);
        (&self.0.step, self.0.s3object_id)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.written.load(Ordering::Relaxed) {
            return;
        }
        let (request_id, user) = (&*self.request_id, &self.user);
        let s3object_id = self.s3object_id;
        match &self.step {
            AuditStep::Issued { source, window_end } => tracing::info!(
                target: "kizen_gateway::audit",
                event = "upload_issued",
                request_id,
                user = ?user,
                s3object_id = %s3object_id,
                source = %source,
                window_end = %window_end,
                "upload issued"
            ),
            AuditStep::Confirmed => tracing::info!(
                target: "kizen_gateway::audit",
                event = "upload_confirmed",
                request_id,
                user = ?user,
                s3object_id = %s3object_id,
                "upload confirmed"
            ),
            AuditStep::Rejected { reason } => tracing::info!(
                target: "kizen_gateway::audit",
                event = "upload_rejected",
                request_id,
                user = ?user,
                s3object_id = %s3object_id,
                reason,
                "confirmation rejected"
            ),
        }
    }
}

/// A presigned upload: counts `uploads_issued`.
pub fn issued(metrics: &Metrics, upload: &IssuedUpload, request_id: &Arc<str>) -> AuditEvent {
    metrics.uploads_issued.inc();
    let step = AuditStep::Issued {
        source: upload.source.clone(),
        window_end: upload.window_end,
    };
    AuditEvent::new(step, upload.s3object_id, &upload.user, request_id)
}

/// An upload Kizen confirmed: counts `uploads_confirmed`.
pub fn confirmed(metrics: &Metrics, upload: &IssuedUpload, request_id: &Arc<str>) -> AuditEvent {
    metrics.uploads_confirmed.inc();
    AuditEvent::new(
        AuditStep::Confirmed,
        upload.s3object_id,
        &upload.user,
        request_id,
    )
}

/// A refused confirmation, with its problem code as `reason`: counts `uploads_rejected`.
pub fn rejected(
    metrics: &Metrics,
    user: &str,
    s3object_id: Uuid,
    reason: &'static str,
    request_id: &Arc<str>,
) -> AuditEvent {
    metrics
        .uploads_rejected
        .get_or_create(&ReasonLabels { reason })
        .inc();
    AuditEvent::new(
        AuditStep::Rejected { reason },
        s3object_id,
        user,
        request_id,
    )
}

/// An upload forgotten unconfirmed (no request causes it): counts `uploads_expired` and logs
/// `upload_expired` at once.
pub fn expired(metrics: &Metrics, upload: &IssuedUpload) {
    metrics.uploads_expired.inc();
    tracing::info!(
        target: "kizen_gateway::audit",
        event = "upload_expired",
        user = ?upload.user,
        s3object_id = %upload.s3object_id,
        "upload expired unconfirmed and was forgotten"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// The lines `body` logs, as text.
    fn logged(body: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, body);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    fn event() -> AuditEvent {
        let request_id: Arc<str> = "req-1".into();
        rejected(
            &Metrics::new(),
            "alice",
            Uuid::nil(),
            "upstream_timeout",
            &request_id,
        )
    }

    #[test]
    fn an_event_no_request_line_took_logs_itself_when_dropped() {
        let lines = logged(|| drop(event()));
        assert_eq!(lines.lines().count(), 1, "{lines}");
        assert!(lines.contains("event=\"upload_rejected\""), "{lines}");
        assert!(lines.contains("request_id=\"req-1\""), "{lines}");
        assert!(lines.contains("reason=\"upstream_timeout\""), "{lines}");
    }

    #[test]
    fn an_event_the_request_line_took_is_not_logged_twice() {
        let lines = logged(|| {
            let event = event();
            let clone = event.clone();
            let (step, _) = event.take();
            assert_eq!(step.event(), "upload_rejected");
            drop(event);
            drop(clone);
        });
        assert_eq!(lines, "");
    }
}

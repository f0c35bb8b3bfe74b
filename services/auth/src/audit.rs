//! Audit events: written to the outbox in the transaction of the change they record (or alone,
//! for things that change nothing, like a failed login), relayed to JetStream as
//! `keel.events.v1.AuditEvent` on `<prefix>.events.<tenant>.audit.<kind>`.

use keel_outbox::{NewEvent, Wakeup};
use keel_tenancy::TenantId;
use prost::Message;
use uuid::Uuid;

#[derive(Clone, Default)]
pub struct Audit {
    wakeup: Wakeup,
}

impl Audit {
    pub fn new(wakeup: Wakeup) -> Self {
        Audit { wakeup }
    }

    pub fn wakeup(&self) -> Wakeup {
        self.wakeup.clone()
    }

    /// Writes one event on `conn` (a transaction's connection, when there is a change to join).
    pub async fn record(
        &self,
        conn: &mut sqlx::PgConnection,
        tenant: &TenantId,
        kind: &'static str,
        user: Option<Uuid>,
        session: Option<&str>,
        details: Vec<(&str, String)>,
    ) -> Result<(), sqlx::Error> {
        let id = Uuid::now_v7();
        let now = chrono::Utc::now();
        let payload = keel_proto::events::AuditEvent {
            event_id: id.to_string(),
            tenant_id: tenant.to_string(),
            kind: kind.to_owned(),
            user_id: user.map(|u| u.to_string()).unwrap_or_default(),
            session_id: session.unwrap_or_default().to_owned(),
            occur_time: Some(keel_proto::timestamp_from_micros(now.timestamp_micros())),
            details: details
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        };
        let subject_kind: &'static str = match kind {
            "login.failed" => "audit.login.failed",
            "session.started" => "audit.session.started",
            "session.revoked" => "audit.session.revoked",
            "refresh.reuse_detected" => "audit.refresh.reuse_detected",
            "mfa.enabled" => "audit.mfa.enabled",
            "mfa.disabled" => "audit.mfa.disabled",
            "mfa.code_replayed" => "audit.mfa.code_replayed",
            "key.rotated" => "audit.key.rotated",
            "key.revoked" => "audit.key.revoked",
            "password.changed" => "audit.password.changed",
            "user.disabled" => "audit.user.disabled",
            _ => "audit.other",
        };
        keel_outbox::insert(
            conn,
            NewEvent::new(
                id,
                tenant,
                subject_kind,
                "keel.events.v1.AuditEvent",
                payload.encode_to_vec(),
            ),
        )
        .await
    }

    /// Call after the transaction holding events has committed.
    pub fn wake(&self) {
        self.wakeup.wake();
    }
}

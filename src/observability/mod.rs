//! What the gateway tells its operators: logs ([`logs`]: the subscriber; [`access`]: one line per
//! request; [`audit`]: one event per step of an upload's life), Prometheus [`metrics`] and
//! optional OpenTelemetry [`traces`]. Nothing here depends on the services it observes.

pub mod access;
pub mod audit;
pub mod logs;
pub mod metrics;
pub mod traces;

//! Records of what passed the gate: request ids, the access log, Prometheus metrics and
//! OpenTelemetry traces. The admin listener (`crate::admin`) serves the metrics.

pub mod access_log;
pub mod metrics;
pub mod request_id;
pub mod time;
pub mod trace;

//! Records of what passed the gate: request ids and the access log (metrics and traces
//! join here later).

pub mod access_log;
pub mod request_id;
pub mod time;

//! Where events and decisions go: stdout (NDJSON or text); subscribers of the
//! [`crate::bus::EventBus`] render with the same [`json`] functions.

pub mod fleet;
pub mod haproxy;
pub mod json;
pub mod prober;
pub mod prometheus;
pub mod stdout;
pub mod text;

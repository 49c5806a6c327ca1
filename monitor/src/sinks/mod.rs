//! Where events and decisions go. For now: stdout, as NDJSON or aligned text.

pub mod stdout;

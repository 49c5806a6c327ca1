//! One file per tracepoint. Each entry point is a thin wrapper around a `try_*` function.

mod error_report;
mod receive_reset;
mod retransmit;
mod set_state;

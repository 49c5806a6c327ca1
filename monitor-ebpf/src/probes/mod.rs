//! One file per kernel hook. Each entry point is a thin wrapper around a `try_*` function.

mod receive_reset;
mod retransmit;
mod set_state;
mod socket_error;

//! One factor for every deadline of the root tests, so that a slow host stretches them
//! all alike instead of each test guessing its own slack.
//!
//! A deadline here is how long a test is willing to wait for a state it polls for (it
//! ends as soon as the state is reached), never a latency goal: timing goals are
//! benchmark figures (BENCHMARKS.md). The factor is `CONNMON_TEST_PATIENCE` (a positive
//! integer) when set, 3 inside the kernel matrix (`CONNMON_KERNEL_MATRIX=1`: QEMU
//! emulates the CPU), 1 otherwise. The deadlines at factor 1 are already generous for a
//! loaded 2-core host; the variable is for hosts slower than that.

use std::{
    thread,
    time::{Duration, Instant},
};

/// The factor every deadline is multiplied by (at least 1).
pub fn patience() -> u32 {
    factor(
        std::env::var("CONNMON_TEST_PATIENCE").ok().as_deref(),
        std::env::var_os("CONNMON_KERNEL_MATRIX").is_some(),
    )
}

fn factor(variable: Option<&str>, in_matrix: bool) -> u32 {
    match variable.map(str::trim).map(str::parse::<u32>) {
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => panic!("CONNMON_TEST_PATIENCE must be a positive integer, not {variable:?}"),
        None if in_matrix => 3,
        None => 1,
    }
}

/// `deadline` stretched by [`patience`].
pub fn patient(deadline: Duration) -> Duration {
    deadline * patience()
}

/// Polls `done` every `every` until it holds; once `timeout` has passed without, panics
/// with `failure()` (built then, so that it can show the state at that moment).
pub fn wait_until(
    timeout: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
    failure: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{}", failure());
        thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::factor;

    #[test]
    fn the_variable_wins_then_the_matrix_then_one() {
        assert_eq!(factor(None, false), 1);
        assert_eq!(factor(None, true), 3);
        assert_eq!(factor(Some("5"), true), 5);
        assert_eq!(factor(Some(" 2 "), false), 2);
    }

    #[test]
    #[should_panic(expected = "positive integer")]
    fn zero_is_refused() {
        factor(Some("0"), false);
    }
}

//! The prober: makes the handshake checks the [`crate::policy::checks::CheckScheduler`]
//! asks for — non-blocking connects from the agent itself, closed as soon as they are
//! established — and reports nothing. The kernel programs classify each probe like any
//! other connect and the pipeline recognises the agent's own connect in the ring buffer;
//! a probe whose kernel event never arrives is accounted for by the scheduler's deadline.
//!
//! It is its own task, fed over a bounded channel (capacity `max_in_flight`, full policy:
//! the pipeline's `try_send` fails, the request is counted as `dropped` and retried by
//! the scheduler — the pipeline never waits for the prober). A semaphore caps the
//! sockets open at once at `max_in_flight` even if the scheduler's accounting and the
//! sockets' lifetimes drift apart.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::TcpSocket,
    sync::{Semaphore, mpsc},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::policy::checks::ProbeRequest;

/// The pipeline's end of the prober's queue.
pub type ProbeSender = mpsc::Sender<ProbeRequest>;

/// Starts the prober on `tasks`; it stops when `shutdown` is cancelled (probes in flight
/// are dropped, which closes their sockets).
/// The prober, sized for the largest `max_in_flight` a reload may set.
pub fn start(cx: &super::SinkContext) -> ProbeSender {
    spawn(
        crate::policy::checks::MAX_IN_FLIGHT as usize,
        &cx.shutdown,
        &cx.tasks,
    )
}

pub fn spawn(
    max_in_flight: usize,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> ProbeSender {
    let (tx, rx) = mpsc::channel(max_in_flight.max(1));
    let shutdown = shutdown.clone();
    let probes = tasks.clone();
    tasks.spawn(run(rx, max_in_flight, shutdown, probes));
    tx
}

async fn run(
    mut rx: mpsc::Receiver<ProbeRequest>,
    max_in_flight: usize,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
    loop {
        let request = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            request = rx.recv() => match request {
                Some(request) => request,
                None => break,
            },
        };
        // The scheduler never has more than `max_in_flight` outstanding, so a slot is
        // normally free; if not, waiting here is the back-pressure that fills the
        // queue and makes the pipeline count drops instead of opening more sockets.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let stop = shutdown.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = probe(request.dst, request.timeout) => {}
            }
            drop(slot);
        });
    }
}

/// One probe. Errors are not reported: the kernel event is the result.
async fn probe(dst: SocketAddr, timeout: Duration) {
    let socket = match dst {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    };
    let Ok(socket) = socket else {
        return;
    };
    // Dropping a pending connect closes it in SYN_SENT: the kernel reports `abandoned`
    // (or `timeout`/`unreachable` if the kernel gave up first).
    if let Ok(Ok(stream)) = tokio::time::timeout(timeout, socket.connect(dst)).await {
        // Close with a RST rather than a FIN: no TIME_WAIT per probe (10 000 probes/s
        // to one member would exhaust its ephemeral ports), nothing for the member to
        // read. Only after ESTABLISHED: a zero linger on a pending connect would turn
        // its close into ECONNRESET.
        #[expect(
            deprecated,
            reason = "a zero linger does not block on drop, which is what tokio warns about"
        )]
        let _ = stream.set_linger(Some(Duration::ZERO));
        drop(stream);
    }
}

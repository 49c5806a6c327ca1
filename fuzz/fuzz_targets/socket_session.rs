//! A whole socket session (`server::session::serve`, the code behind every client of
//! `connmon.sock`): the input is what a client (root, or an unprivileged uid) writes — any bytes, split into
//! writes at arbitrary points, overlong lines, no final newline — answered by the
//! engine through the real control channel, with subscriptions on the real event bus.
//! Then the client stops writing, the session goes quiet and the agent shuts down.
//! Every line the client receives is one JSON object and the first is `hello`; the
//! session ends (a hang is reported by libFuzzer as a timeout).
#![no_main]

use std::sync::Arc;

use connmon_fuzz::{Engine, assert_one_json_object};
use libfuzzer_sys::fuzz_target;
use monitor::server::{
    ServerStats,
    peer::{Peer, Permissions},
    session::{self, SessionContext},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixStream,
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
}

/// Yields until every task has had the chance to run (no task is ready any more).
async fn settle() {
    for _ in 0..32 {
        tokio::task::yield_now().await;
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the peer (its low bit: root or an unprivileged uid, whose
    // state-changing commands are refused) and the write size, so that lines arrive
    // split at any point.
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let privileged = first & 1 == 0;
    let chunk = usize::from(first >> 1).max(1) * 97;
    RUNTIME.with(|rt| rt.block_on(run(input, chunk, privileged)));
});

async fn run(input: &[u8], chunk: usize, privileged: bool) {
    let mut engine = Engine::with_defaults();
    let (control_tx, mut control_rx) = mpsc::channel(64);
    let shutdown = CancellationToken::new();
    let ctx = SessionContext {
        bus: engine.bus(),
        control: control_tx,
        permissions: Arc::new(Permissions::default()),
        default_ejection: std::time::Duration::from_secs(30),
        stats: Arc::new(ServerStats::default()),
        shutdown: shutdown.clone(),
    };
    let (server, client) = UnixStream::pair().expect("socketpair");
    let uid = if privileged { 0 } else { 65534 };
    let peer = Peer {
        uid,
        gid: uid,
        pid: None,
    };
    let (mut client_read, mut client_write) = client.into_split();
    let pipeline = async {
        while let Some(control) = control_rx.recv().await {
            engine.control(control);
            engine.advance(1_000_000_000);
        }
    };
    let writer = async {
        for part in input.chunks(chunk) {
            if client_write.write_all(part).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    let reader = async {
        let mut received = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                n = client_read.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                },
                () = settle() => shutdown.cancel(),
            }
        }
        received
    };
    let session = async {
        session::serve(server, peer, ctx).await;
    };
    let (received, (), (), ()) = tokio::join!(reader, writer, session, pipeline);
    let text = std::str::from_utf8(&received).expect("the session writes UTF-8");
    let lines: Vec<&str> = text.split('\n').filter(|l| !l.is_empty()).collect();
    assert!(
        lines.first().is_some_and(|l| l.contains("\"hello\"")),
        "the first line is not hello: {text:?}"
    );
    for line in &lines {
        assert_one_json_object(line);
    }
}

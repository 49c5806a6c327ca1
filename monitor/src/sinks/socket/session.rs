//! One client connection: a reader that turns lines into commands (answering through the
//! pipeline's control channel) and a writer that owns the socket's write half and sends
//! replies, subscribed events, `lagged` notices and, at shutdown, `bye`.
//!
//! A subscription is this client's own receiver on the event bus, so its queue is the
//! bus's bounded ring (`agent.bus_capacity` messages): publishing never waits for it.
//! When the client reads too slowly the ring overwrites what it has not taken yet; the
//! next receive reports how many were lost (`RecvError::Lagged`) and the client gets
//! `{"type":"lagged","missed":N}` in their place. Nothing else waits on a slow client:
//! its writer is blocked in its own task, other sessions and the pipeline go on.

use std::{sync::Arc, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{broadcast, mpsc, oneshot},
};
use tokio_util::sync::CancellationToken;

use super::{
    ServerStats,
    peer::{Peer, Permissions},
    protocol::{self, Action, Filter, ProtocolError},
    snapshot_reply::{self, SnapshotReply},
};
use crate::{
    bus::{EventBus, Published},
    control::Control,
    protocol::{ErrorCode, Pong, PoolIs, Success, Target},
};

/// Consecutive bad lines after which the connection is closed.
pub const MAX_CONSECUTIVE_ERRORS: u32 = 10;
/// How long a command may wait for the pipeline.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the goodbye may take to a client that does not read.
const BYE_TIMEOUT: Duration = Duration::from_millis(500);
/// Replies queued for the writer; the reader waits when it is full (a client that
/// sends commands but never reads only stalls itself).
const REPLY_QUEUE: usize = 16;
/// Events written to the socket in one call when several are ready.
const WRITE_BATCH: usize = 256;

/// What the session needs from the server.
#[derive(Clone)]
pub struct SessionContext {
    pub bus: EventBus,
    pub control: mpsc::Sender<Control>,
    pub permissions: Arc<Permissions>,
    pub default_ejection: Duration,
    pub stats: Arc<ServerStats>,
    pub shutdown: CancellationToken,
}

/// From the reader to the writer.
enum Outgoing {
    Line(String),
    Subscribe(Filter, Option<Value>),
    /// A `snapshot` reply, rendered and written [`snapshot_reply::CHUNK`] bytes at a time.
    Snapshot(Box<SnapshotReply>),
    /// Write the line, then close the connection.
    Close(String),
}

/// Serves one connection until the client leaves, misbehaves too often, or the agent
/// shuts down.
pub async fn serve(stream: UnixStream, peer: Peer, ctx: SessionContext) {
    let may_change_state = ctx.permissions.may_change_state(&peer);
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel(REPLY_QUEUE);
    let reader = Reader {
        ctx: ctx.clone(),
        peer,
        may_change_state,
        out: tx,
    };
    let mut writer = Writer {
        ctx,
        write,
        interrupted: false,
    };
    if writer
        .send(protocol::hello(may_change_state).as_bytes())
        .await
        .is_err()
    {
        return;
    }
    tokio::join!(reader.run(read), writer.run(rx));
}

struct Reader {
    ctx: SessionContext,
    peer: Peer,
    may_change_state: bool,
    out: mpsc::Sender<Outgoing>,
}

/// One line from the client.
enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

impl Reader {
    async fn run(self, read: OwnedReadHalf) {
        let mut read = BufReader::with_capacity(8192, read);
        let mut buf = Vec::with_capacity(1024);
        let mut errors = 0u32;
        loop {
            let line = tokio::select! {
                line = read_line(&mut read, &mut buf) => line,
                _ = self.ctx.shutdown.cancelled() => return,
            };
            let (id, result) = match line {
                Ok(Line::Eof) | Err(_) => return,
                Ok(Line::TooLong) => (None, Err(ProtocolError::LineTooLong)),
                Ok(Line::Text(text)) => {
                    if text.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let parsed = protocol::parse_line(&text);
                    let result = match parsed.request {
                        Ok(request) => self.execute(request, parsed.id.as_ref()).await,
                        Err(e) => Err(e),
                    };
                    (parsed.id, result)
                }
            };
            let outgoing = match result {
                Ok(outgoing) => {
                    errors = 0;
                    outgoing
                }
                Err(err) => {
                    errors += 1;
                    self.ctx.stats.count_protocol_error();
                    let line = protocol::error(&err, id.as_ref());
                    if errors >= MAX_CONSECUTIVE_ERRORS {
                        self.ctx.stats.count_closed_for_errors();
                        tracing::debug!(uid = self.peer.uid, pid = ?self.peer.pid, "closing a socket client after {errors} consecutive errors");
                        let _ = self.out.send(Outgoing::Line(line)).await;
                        let close = protocol::connection_error(
                            ErrorCode::TooManyErrors,
                            &format!(
                                "{MAX_CONSECUTIVE_ERRORS} consecutive bad lines: closing the connection"
                            ),
                        );
                        let _ = self.out.send(Outgoing::Close(close)).await;
                        return;
                    }
                    Outgoing::Line(line)
                }
            };
            if self.out.send(outgoing).await.is_err() {
                return;
            }
        }
    }

    async fn execute(
        &self,
        request: Action,
        id: Option<&Value>,
    ) -> Result<Outgoing, ProtocolError> {
        if request.changes_state() && !self.may_change_state {
            return Err(ProtocolError::Forbidden {
                cmd: request.name(),
                uid: self.peer.uid,
                gid: self.peer.gid,
            });
        }
        let line = match request {
            Action::Subscribe(filter) => return Ok(Outgoing::Subscribe(filter, id.cloned())),
            Action::Ping => protocol::render(&Pong {}, id),
            Action::Snapshot => {
                let snapshot = self.ask(|reply| Control::Snapshot { reply }).await?;
                // Written a chunk at a time by the writer, not rendered whole here.
                return Ok(Outgoing::Snapshot(Box::new(SnapshotReply::new(
                    snapshot,
                    self.ctx.stats.to_json(),
                    id,
                ))));
            }
            Action::PoolList => {
                let pool = self.ask(|reply| Control::PoolList { reply }).await?;
                pool_reply(&pool, id)
            }
            Action::Pool { op, members } => {
                let pool = self
                    .ask(|reply| Control::Pool { op, members, reply })
                    .await?;
                pool_reply(&pool, id)
            }
            Action::Evict { dst, duration } => {
                let duration = duration.unwrap_or(self.ctx.default_ejection);
                if !self
                    .ask(|reply| Control::Evict {
                        dst,
                        duration,
                        reply,
                    })
                    .await?
                {
                    return Err(ProtocolError::Rejected(format!(
                        "evict: {dst} was not ejected (the destination table is full)"
                    )));
                }
                tracing::info!(%dst, ?duration, uid = self.peer.uid, "manual evict over the socket");
                let dst = dst.to_string();
                protocol::render(&Success::Evict(Target { dst }), id)
            }
            Action::Reinstate { dst } => {
                if !self.ask(|reply| Control::Reinstate { dst, reply }).await? {
                    return Err(ProtocolError::Rejected(format!(
                        "reinstate: {dst} is not ejected"
                    )));
                }
                tracing::info!(%dst, uid = self.peer.uid, "manual reinstate over the socket");
                let dst = dst.to_string();
                protocol::render(&Success::Reinstate(Target { dst }), id)
            }
        };
        Ok(Outgoing::Line(line))
    }

    /// Sends a command to the pipeline and waits for its answer.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Control,
    ) -> Result<T, ProtocolError> {
        let (reply, answer) = oneshot::channel();
        let sent =
            tokio::time::timeout(CONTROL_TIMEOUT, self.ctx.control.send(command(reply))).await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ProtocolError::Unavailable("the pipeline has stopped")),
            Err(_) => {
                return Err(ProtocolError::Unavailable(
                    "its command queue stayed full for 5s",
                ));
            }
        }
        match tokio::time::timeout(CONTROL_TIMEOUT, answer).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(ProtocolError::Unavailable("the pipeline has stopped")),
            Err(_) => Err(ProtocolError::Unavailable("no answer within 5s")),
        }
    }
}

/// `{"type":"ok","cmd":"pool","pool":[...]}`.
fn pool_reply(pool: &[crate::policy::PoolEntry], id: Option<&Value>) -> String {
    let pool = pool.iter().map(ToString::to_string).collect();
    protocol::render(&Success::Pool(PoolIs { pool }), id)
}

/// Reads one line of at most [`protocol::MAX_LINE_BYTES`]; a longer one is skipped up
/// to its newline (never buffered whole) and reported as [`Line::TooLong`]. A final line
/// without a newline still counts.
async fn read_line(
    read: &mut BufReader<OwnedReadHalf>,
    buf: &mut Vec<u8>,
) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = read.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (too_long, buf.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::Eof,
                (false, false) => Line::Text(std::mem::take(buf)),
            });
        }
        let (chunk, used, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        if !too_long {
            if buf.len() + chunk.len() > protocol::MAX_LINE_BYTES {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        read.consume(used);
        if done {
            if too_long {
                return Ok(Line::TooLong);
            }
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Line::Text(std::mem::take(buf)));
        }
    }
}

struct Writer {
    ctx: SessionContext,
    write: OwnedWriteHalf,
    /// A write was cut short by shutdown: the socket may hold half a line.
    interrupted: bool,
}

/// The writer stops.
struct Stop;

impl Writer {
    async fn run(&mut self, mut replies: mpsc::Receiver<Outgoing>) {
        let mut events: Option<(broadcast::Receiver<Arc<Published>>, Filter)> = None;
        let mut replies_open = true;
        let mut batch = Vec::with_capacity(64 * 1024);
        loop {
            let step = tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => break,
                out = replies.recv(), if replies_open => match out {
                    Some(Outgoing::Line(line)) => self.send(line.as_bytes()).await,
                    Some(Outgoing::Snapshot(reply)) => self.send_snapshot(*reply).await,
                    Some(Outgoing::Subscribe(filter, id)) => {
                        let line = protocol::subscribed(&filter, id.as_ref());
                        // Subscribe again: same receiver, new filter; events already
                        // queued are filtered by the new one.
                        match &mut events {
                            Some((_, current)) => *current = filter,
                            None => events = Some((self.ctx.bus.subscribe(), filter)),
                        }
                        self.send(line.as_bytes()).await
                    }
                    Some(Outgoing::Close(line)) => {
                        let _ = self.send(line.as_bytes()).await;
                        return;
                    }
                    None => {
                        // The client stopped sending; keep streaming to a subscriber.
                        replies_open = false;
                        if events.is_none() {
                            return;
                        }
                        Ok(())
                    }
                },
                received = recv(&mut events) => {
                    let Some((rx, filter)) = &mut events else { continue };
                    batch.clear();
                    let mut closed = false;
                    let mut next = Some(received);
                    let mut taken = 0;
                    while let Some(message) = next.take() {
                        match message {
                            Ok(msg) => {
                                if filter.matches(msg.topic, msg.role) {
                                    batch.extend_from_slice(msg.json().as_bytes());
                                    batch.push(b'\n');
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(missed)) => {
                                self.ctx.stats.count_lagged(missed);
                                batch.extend_from_slice(protocol::lagged(missed).as_bytes());
                                batch.push(b'\n');
                            }
                            Err(broadcast::error::RecvError::Closed) => {
                                closed = true;
                                break;
                            }
                        }
                        taken += 1;
                        if taken == WRITE_BATCH {
                            break;
                        }
                        next = match rx.try_recv() {
                            Ok(msg) => Some(Ok(msg)),
                            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Err(broadcast::error::RecvError::Lagged(n))),
                            Err(broadcast::error::TryRecvError::Closed) => Some(Err(broadcast::error::RecvError::Closed)),
                            Err(broadcast::error::TryRecvError::Empty) => None,
                        };
                    }
                    let sent = self.send_raw(&batch).await;
                    if closed {
                        // The pipeline is gone; shutdown follows.
                        events = None;
                    }
                    sent
                }
            };
            if step.is_err() {
                break;
            }
        }
        if self.ctx.shutdown.is_cancelled() {
            let mut bye = Vec::new();
            if self.interrupted {
                bye.push(b'\n');
            }
            bye.extend_from_slice(protocol::bye().as_bytes());
            bye.push(b'\n');
            let _ = tokio::time::timeout(BYE_TIMEOUT, self.write.write_all(&bye)).await;
        }
        let _ = tokio::time::timeout(BYE_TIMEOUT, self.write.shutdown()).await;
    }

    /// Writes one line and its newline.
    async fn send(&mut self, line: &[u8]) -> Result<(), Stop> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        self.send_raw(&buf).await
    }

    /// Writes a `snapshot` reply chunk by chunk: its memory is a chunk and the
    /// destinations not written yet, never the whole rendered line.
    async fn send_snapshot(&mut self, mut reply: SnapshotReply) -> Result<(), Stop> {
        let mut buf = Vec::with_capacity(snapshot_reply::CHUNK + 4096);
        while reply.fill(&mut buf) {
            self.send_raw(&buf).await?;
            buf.clear();
        }
        self.send_raw(&buf).await
    }

    /// Writes whole lines, giving up at shutdown (a client that does not read must not
    /// hold the agent's exit).
    async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        if bytes.is_empty() {
            return Ok(());
        }
        tokio::select! {
            written = self.write.write_all(bytes) => written.map_err(|_| Stop),
            _ = self.ctx.shutdown.cancelled() => {
                self.interrupted = true;
                Err(Stop)
            }
        }
    }
}

/// The next bus message, or never without a subscription.
async fn recv(
    events: &mut Option<(broadcast::Receiver<Arc<Published>>, Filter)>,
) -> Result<Arc<Published>, broadcast::error::RecvError> {
    match events {
        Some((rx, _)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::AsyncBufReadExt as _;

    use super::*;
    use crate::{
        clock::WallClock,
        policy::Role,
        source::event::{KernelEvent, refused_to},
    };

    fn refused(port: u16) -> KernelEvent {
        refused_to(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// A session on one end of a socket pair; the other end, past `hello` and a subscribe.
    async fn subscribed(
        bus: &EventBus,
    ) -> (
        SessionContext,
        tokio::task::JoinHandle<()>,
        tokio::io::Lines<BufReader<OwnedReadHalf>>,
        OwnedWriteHalf,
    ) {
        let (control, _) = mpsc::channel(1);
        let ctx = SessionContext {
            bus: bus.clone(),
            control,
            permissions: Arc::default(),
            default_ejection: Duration::from_secs(1),
            stats: Arc::default(),
            shutdown: CancellationToken::new(),
        };
        let (server, client) = UnixStream::pair().unwrap();
        let task = tokio::spawn(serve(
            server,
            Peer {
                uid: 0,
                gid: 0,
                pid: None,
            },
            ctx.clone(),
        ));
        let (read, mut write) = client.into_split();
        let mut lines = BufReader::new(read).lines();
        assert!(
            lines
                .next_line()
                .await
                .unwrap()
                .unwrap()
                .starts_with(r#"{"type":"hello""#)
        );
        write
            .write_all(b"{\"cmd\":\"subscribe\",\"types\":[\"connect\"]}\n")
            .await
            .unwrap();
        assert!(
            lines
                .next_line()
                .await
                .unwrap()
                .unwrap()
                .starts_with(r#"{"type":"ok""#)
        );
        // The caller keeps the write half open: the session streams until shutdown.
        (ctx, task, lines, write)
    }

    fn port_of(line: &str) -> u16 {
        let v: Value = serde_json::from_str(line).unwrap();
        v["dst"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn every_event_arrives_in_order_across_write_batches_then_bye() {
        let bus = EventBus::new(4096, WallClock::from_offset_ns(0));
        let (ctx, task, mut lines, _write) = subscribed(&bus).await;
        let n = WRITE_BATCH as u16 * 3 + 7;
        for port in 1..=n {
            bus.event(&refused(port), Role::Proxy);
        }
        for port in 1..=n {
            assert_eq!(port_of(&lines.next_line().await.unwrap().unwrap()), port);
        }
        ctx.shutdown.cancel();
        assert_eq!(
            lines.next_line().await.unwrap().unwrap(),
            r#"{"type":"bye","reason":"shutdown"}"#
        );
        assert_eq!(lines.next_line().await.unwrap(), None);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_subscriber_that_fell_behind_is_told_how_many_it_missed() {
        let bus = EventBus::new(8, WallClock::from_offset_ns(0));
        let (ctx, _task, mut lines, _write) = subscribed(&bus).await;
        for port in 1..=20 {
            bus.event(&refused(port), Role::Proxy);
        }
        assert_eq!(
            lines.next_line().await.unwrap().unwrap(),
            r#"{"type":"lagged","missed":12}"#
        );
        for port in 13..=20 {
            assert_eq!(port_of(&lines.next_line().await.unwrap().unwrap()), port);
        }
        assert_eq!(ctx.stats.to_json()["lagged_messages"], 12);
    }
}

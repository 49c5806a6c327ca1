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
//!
//! The client only ever gets whole lines. At shutdown a subscriber is given what is
//! still queued for it (the final stats included) for as long as it reads, within
//! [`FLUSH_AT_SHUTDOWN`]; what it did not take is counted in one last `lagged` notice,
//! and `bye` ends the stream.

use std::{collections::VecDeque, sync::Arc, time::Duration};

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
/// At shutdown, how long a subscriber gets to take what is still queued for it.
const FLUSH_AT_SHUTDOWN: Duration = Duration::from_millis(500);
/// Bytes given to one write at most, cut at a line end (see [`Outbox`]).
const WRITE_CHUNK: usize = 32 * 1024;
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
        out: Outbox::default(),
    };
    if writer
        .send(&protocol::hello(may_change_state))
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
    out: Outbox,
}

/// Why the writer stops writing.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// The client is gone (or a write failed).
    Gone,
    /// The agent is shutting down.
    Shutdown,
    /// The time for the goodbye ran out.
    Deadline,
}

/// A subscription: this client's receiver on the bus and its filter.
type Subscription = (broadcast::Receiver<Arc<Published>>, Filter);

impl Writer {
    async fn run(&mut self, mut replies: mpsc::Receiver<Outgoing>) {
        let mut events: Option<Subscription> = None;
        let mut replies_open = true;
        let stop = loop {
            let step = tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => Err(Stop::Shutdown),
                out = replies.recv(), if replies_open => match out {
                    Some(Outgoing::Line(line)) => self.send(&line).await,
                    Some(Outgoing::Snapshot(reply)) => self.send_snapshot(*reply).await,
                    Some(Outgoing::Subscribe(filter, id)) => {
                        let line = protocol::subscribed(&filter, id.as_ref());
                        // Subscribe again: same receiver, new filter; events already
                        // queued are filtered by the new one.
                        match &mut events {
                            Some((_, current)) => *current = filter,
                            None => events = Some((self.ctx.bus.subscribe(), filter)),
                        }
                        self.send(&line).await
                    }
                    Some(Outgoing::Close(line)) => {
                        let _ = self.send(&line).await;
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
                    let closed = self.out.take_events(Some(received), rx, filter, &self.ctx.stats);
                    if closed {
                        // The pipeline is gone; shutdown follows.
                        events = None;
                    }
                    self.flush(None).await
                }
            };
            if let Err(stop) = step {
                break stop;
            }
        };
        if stop == Stop::Shutdown {
            self.goodbye(events).await;
        }
        let _ = tokio::time::timeout(BYE_TIMEOUT, self.write.shutdown()).await;
    }

    /// At shutdown: what is queued for the client and what the bus still holds for it
    /// (the final stats among it), for as long as the client takes it within
    /// [`FLUSH_AT_SHUTDOWN`]; then a `lagged` notice counting the messages that did not
    /// go, and `bye`. The client gets whole lines only: writes end at line ends, and a
    /// line the socket took part of (only a `snapshot` reply longer than a write) is
    /// finished first — if even that runs out of time, the connection is closed without
    /// a goodbye rather than with a line cut short inside the stream.
    async fn goodbye(&mut self, mut events: Option<Subscription>) {
        let deadline = tokio::time::Instant::now() + FLUSH_AT_SHUTDOWN;
        let mut flushed = self.flush(Some(deadline)).await;
        if let Some((rx, filter)) = &mut events {
            while flushed.is_ok() {
                let closed = self.out.take_events(None, rx, filter, &self.ctx.stats);
                if self.out.is_empty() {
                    break;
                }
                flushed = self.flush(Some(deadline)).await;
                if closed {
                    break;
                }
            }
        }
        if flushed == Err(Stop::Gone) {
            return;
        }
        if self.out.mid_line() {
            let _ = self
                .out
                .finish_line_within(&mut self.write, BYE_TIMEOUT)
                .await;
            if self.out.mid_line() {
                return;
            }
        }
        let mut missed = self.out.drop_unsent();
        if let Some((rx, filter)) = &mut events {
            missed += left_in(rx, filter);
        }
        if missed > 0 {
            self.ctx.stats.count_lagged(missed);
            self.out.push_line(protocol::lagged(missed).as_bytes(), 0);
        }
        self.out.push_line(protocol::bye().as_bytes(), 0);
        let _ = self
            .flush(Some(tokio::time::Instant::now() + BYE_TIMEOUT))
            .await;
    }

    /// Writes one line and its newline.
    async fn send(&mut self, line: &str) -> Result<(), Stop> {
        self.out.push_line(line.as_bytes(), 0);
        self.flush(None).await
    }

    /// Writes a `snapshot` reply chunk by chunk as [`snapshot_reply::render`] renders
    /// it on a blocking thread: this thread (every session's) only copies bytes, and the
    /// reply's memory is a few chunks and the destinations not rendered yet, never the
    /// whole line. Once begun the line is finished, at shutdown too (within
    /// [`FLUSH_AT_SHUTDOWN`]).
    async fn send_snapshot(&mut self, reply: SnapshotReply) -> Result<(), Stop> {
        let mut chunks = snapshot_reply::render(reply);
        let mut until = None;
        loop {
            let next = match until {
                None => tokio::select! {
                    biased;
                    _ = self.ctx.shutdown.cancelled() => {
                        until = Some(tokio::time::Instant::now() + FLUSH_AT_SHUTDOWN);
                        continue;
                    }
                    next = chunks.recv() => next,
                },
                Some(at) => tokio::time::timeout_at(at, chunks.recv())
                    .await
                    .map_err(|_| Stop::Deadline)?,
            };
            // The renderer ends only after the last chunk; without it the line cannot
            // be finished.
            let Some(chunk) = next else {
                return Err(Stop::Gone);
            };
            self.out.push_part(&chunk.bytes, chunk.last);
            match self.flush(until).await {
                Ok(()) => {}
                Err(Stop::Shutdown) => {
                    until = Some(tokio::time::Instant::now() + FLUSH_AT_SHUTDOWN);
                    self.flush(until).await?;
                }
                Err(stop) => return Err(stop),
            }
            if chunk.last {
                return match until {
                    Some(_) => Err(Stop::Shutdown),
                    None => Ok(()),
                };
            }
        }
    }

    /// Writes the outbox. Without `until` it gives up at shutdown (a client that does not
    /// read must not hold the agent's exit; what is not written stays in the outbox);
    /// with it, it goes on until that instant.
    async fn flush(&mut self, until: Option<tokio::time::Instant>) -> Result<(), Stop> {
        while let Some(chunk) = self.out.next_chunk() {
            let written = match until {
                None => tokio::select! {
                    biased;
                    _ = self.ctx.shutdown.cancelled() => return Err(Stop::Shutdown),
                    written = self.write.write(chunk) => written,
                },
                Some(at) => tokio::time::timeout_at(at, self.write.write(chunk))
                    .await
                    .map_err(|_| Stop::Deadline)?,
            };
            match written {
                Ok(n) if n > 0 => self.out.sent(n),
                _ => return Err(Stop::Gone),
            }
        }
        Ok(())
    }
}

/// Bus messages still queued for a subscriber that its filter would have let through
/// (what it misses when the agent stops).
fn left_in(rx: &mut broadcast::Receiver<Arc<Published>>, filter: &Filter) -> u64 {
    let mut left = 0;
    loop {
        match rx.try_recv() {
            Ok(msg) => left += u64::from(filter.matches(msg.topic, msg.role)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => left += n,
            Err(_) => return left,
        }
    }
}

/// Lines on their way to the socket, written [`WRITE_CHUNK`] bytes at most at a time and
/// cut at line ends: a Unix stream socket takes a write that fits one of its buffers
/// (`unix_stream_sendmsg` builds up to SKB_MAX_HEAD + 32 KiB per skb) whole or not at
/// all, so the client never holds part of a line that was not finished — except for a
/// line longer than a chunk (a large `snapshot` reply), which [`Outbox::mid_line`]
/// tells.
#[derive(Default)]
struct Outbox {
    bytes: Vec<u8>,
    /// How much of `bytes` the socket has taken.
    sent: usize,
    /// Where each complete line ends in `bytes` and how many bus messages it carries
    /// (an event 1, a `lagged` notice its count, a reply 0): what the subscriber misses
    /// if it is dropped.
    lines: VecDeque<(usize, u64)>,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.sent == self.bytes.len()
    }

    /// Appends a line (a newline is added) carrying `weight` bus messages.
    fn push_line(&mut self, line: &[u8], weight: u64) {
        self.bytes.extend_from_slice(line);
        self.bytes.push(b'\n');
        self.lines.push_back((self.bytes.len(), weight));
    }

    /// Appends part of a long line; `last`: the part ends it (its newline included).
    fn push_part(&mut self, part: &[u8], last: bool) {
        self.bytes.extend_from_slice(part);
        if last {
            self.lines.push_back((self.bytes.len(), 0));
        }
    }

    /// Renders what the subscription holds (`first`, then up to [`WRITE_BATCH`] more
    /// without waiting) into the outbox; true when the bus has closed.
    fn take_events(
        &mut self,
        first: Option<Result<Arc<Published>, broadcast::error::RecvError>>,
        rx: &mut broadcast::Receiver<Arc<Published>>,
        filter: &Filter,
        stats: &ServerStats,
    ) -> bool {
        let mut next = first.or_else(|| try_recv(rx));
        let mut taken = 0;
        while let Some(message) = next.take() {
            match message {
                Ok(msg) => {
                    if filter.matches(msg.topic, msg.role) {
                        self.push_line(msg.json().as_bytes(), 1);
                        stats.count_sent();
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    stats.count_lagged(missed);
                    self.push_line(protocol::lagged(missed).as_bytes(), missed);
                }
                Err(broadcast::error::RecvError::Closed) => return true,
            }
            taken += 1;
            if taken == WRITE_BATCH {
                break;
            }
            next = try_recv(rx);
        }
        false
    }

    /// The next bytes to write: up to the last line end within [`WRITE_CHUNK`] (or a
    /// chunk of a longer line).
    fn next_chunk(&self) -> Option<&[u8]> {
        if self.is_empty() {
            return None;
        }
        let limit = (self.sent + WRITE_CHUNK).min(self.bytes.len());
        let end = self
            .lines
            .iter()
            .map(|&(end, _)| end)
            .take_while(|&end| end <= limit)
            .last()
            .unwrap_or(limit);
        Some(&self.bytes[self.sent..end])
    }

    /// The socket took `n` more bytes.
    fn sent(&mut self, n: usize) {
        self.sent += n;
        while self.lines.front().is_some_and(|&(end, _)| end <= self.sent) {
            self.lines.pop_front();
        }
        if self.is_empty() {
            self.clear();
        }
    }

    /// Whether the socket holds the beginning of a line whose end it has not taken.
    fn mid_line(&self) -> bool {
        !self.at_line_end()
    }

    /// Whether everything sent ends at a line end.
    fn at_line_end(&self) -> bool {
        self.sent == 0 || self.bytes.get(self.sent - 1) == Some(&b'\n')
    }

    /// Writes the rest of the line the socket took part of, within `limit`.
    async fn finish_line_within(
        &mut self,
        write: &mut OwnedWriteHalf,
        limit: Duration,
    ) -> Result<(), Stop> {
        let deadline = tokio::time::Instant::now() + limit;
        while self.mid_line() {
            let end = self.bytes[self.sent..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.bytes.len(), |i| self.sent + i + 1);
            let written =
                tokio::time::timeout_at(deadline, write.write(&self.bytes[self.sent..end]))
                    .await
                    .map_err(|_| Stop::Deadline)?;
            match written {
                Ok(n) if n > 0 => self.sent(n),
                _ => return Err(Stop::Gone),
            }
        }
        Ok(())
    }

    /// Drops every line not written yet; returns the bus messages they carried.
    fn drop_unsent(&mut self) -> u64 {
        let missed = self.lines.iter().map(|&(_, weight)| weight).sum();
        self.clear();
        missed
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.sent = 0;
        self.lines.clear();
    }
}

/// `try_recv` as a `recv` result; None when nothing is queued.
fn try_recv(
    rx: &mut broadcast::Receiver<Arc<Published>>,
) -> Option<Result<Arc<Published>, broadcast::error::RecvError>> {
    match rx.try_recv() {
        Ok(msg) => Some(Ok(msg)),
        Err(broadcast::error::TryRecvError::Lagged(n)) => {
            Some(Err(broadcast::error::RecvError::Lagged(n)))
        }
        Err(broadcast::error::TryRecvError::Closed) => {
            Some(Err(broadcast::error::RecvError::Closed))
        }
        Err(broadcast::error::TryRecvError::Empty) => None,
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
        let line = lines.next_line().await.unwrap().unwrap();
        assert!(line.starts_with(r#"{"type":"hello""#), "{line}");
        write
            .write_all(b"{\"cmd\":\"subscribe\",\"types\":[\"connect\"]}\n")
            .await
            .unwrap();
        let line = lines.next_line().await.unwrap().unwrap();
        assert!(line.starts_with(r#"{"type":"ok""#), "{line}");
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

    /// A subscriber that does not read while 20 000 events are published, then reads
    /// after the agent began to stop: whole lines only, in order, then a `lagged` notice
    /// for what did not go (if anything), then `bye` — every event accounted for.
    #[tokio::test]
    async fn at_shutdown_a_flooded_subscriber_gets_whole_lines_then_lagged_then_bye() {
        const N: u16 = 20_000;
        let bus = EventBus::new(usize::from(N), WallClock::from_offset_ns(0));
        let (ctx, task, mut lines, _write) = subscribed(&bus).await;
        for port in 1..=N {
            bus.event(&refused(port), Role::Proxy);
        }
        // The writer fills the socket and waits on it in the middle of a batch.
        tokio::time::sleep(Duration::from_millis(200)).await;
        ctx.shutdown.cancel();
        let (mut delivered, mut missed, mut tail) = (0u16, 0u64, Vec::new());
        while let Some(line) = lines.next_line().await.expect("read") {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|err| {
                panic!(
                    "line {} is not whole JSON ({err}): {line:.200}",
                    delivered + 1
                )
            });
            match v["type"].as_str() {
                Some("connect") if tail.is_empty() => {
                    delivered += 1;
                    assert_eq!(port_of(&line), delivered, "events in order, none skipped");
                }
                Some("lagged") if tail.is_empty() => {
                    missed = v["missed"].as_u64().expect("missed");
                    tail.push("lagged");
                }
                Some("bye") => tail.push("bye"),
                _ => panic!("unexpected line after {delivered} events: {line:.200}"),
            }
        }
        assert_eq!(
            tail.last(),
            Some(&"bye"),
            "the stream ends with bye: {tail:?}"
        );
        assert_eq!(
            u64::from(delivered) + missed,
            u64::from(N),
            "{delivered} delivered + {missed} counted as lagged = every event"
        );
        task.await.expect("session");
    }

    /// A stand-in for the pipeline's end of the control channel: answers every command
    /// (snapshots from a real engine holding `destinations`), each after a yield.
    fn pipeline(destinations: u16) -> mpsc::Sender<Control> {
        let (control, mut commands) = mpsc::channel::<Control>(4);
        tokio::spawn(async move {
            let pool = crate::policy::pool::PoolMembership::parse("10.1.0.0/16").expect("pool");
            let wall = WallClock::from_offset_ns(1_700_000_000_000_000_000);
            let mut policy = crate::policy::EjectionPolicy::new(
                crate::policy::config::PolicyConfig::default(),
                pool,
                1,
                wall,
                1,
            )
            .expect("valid config");
            let mut out = Vec::new();
            let now = 1_000_000_000_000;
            for i in 0..destinations {
                let dst = SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8], 8080));
                let KernelEvent::Connect(mut rec) = refused_to(dst) else {
                    panic!("refused_to gives a connect")
                };
                rec.ktime_ns = now;
                rec.start_ns = now - 1_000;
                policy.on_connect(&rec, now, &mut out);
            }
            while let Some(command) = commands.recv().await {
                tokio::task::yield_now().await;
                match command {
                    Control::Snapshot { reply } => {
                        let _ = reply.send(policy.snapshot(now));
                    }
                    Control::Pool { members, reply, .. } => {
                        let _ = reply.send(members);
                    }
                    Control::PoolList { reply } => {
                        let _ = reply.send(Vec::new());
                    }
                    Control::Evict { reply, .. } | Control::Reinstate { reply, .. } => {
                        let _ = reply.send(true);
                    }
                    Control::Fleet { .. } => panic!("no fleet here"),
                }
            }
        });
        control
    }

    /// The CI failure of issue #18 suspected this first (it was the refusals, see
    /// `a_storm_of_refused_connects_holds_no_sockets`): a client that pipelines
    /// commands — snapshots of 3 000 destinations among them, each longer than a write —
    /// and half-closes before reading gets `hello` and then every reply, whole and in
    /// order, before the end of the stream.
    #[tokio::test]
    async fn a_pipelining_client_that_half_closes_gets_every_reply_in_order() {
        const COMMANDS: usize = 200;
        let ctx = SessionContext {
            bus: EventBus::new(16, WallClock::from_offset_ns(0)),
            control: pipeline(3_000),
            permissions: Arc::default(),
            default_ejection: Duration::from_secs(1),
            stats: Arc::default(),
            shutdown: CancellationToken::new(),
        };
        let (server, client) = UnixStream::pair().unwrap();
        let peer = Peer {
            uid: 0,
            gid: 0,
            pid: None,
        };
        let session = tokio::spawn(serve(server, peer, ctx));
        let (read, mut write) = client.into_split();
        let mut burst = String::new();
        let mut expected = Vec::new();
        for i in 0..COMMANDS {
            let dst = format!("10.2.0.{}:80", i % 250);
            let (cmd, reply) = match i % 6 {
                _ if i % 40 == 39 => (serde_json::json!({"cmd": "snapshot"}), "snapshot"),
                0 => (
                    serde_json::json!({"cmd": "pool", "op": "add", "members": [dst]}),
                    "ok",
                ),
                1 => (serde_json::json!({"cmd": "evict", "dst": dst}), "ok"),
                2 => (serde_json::json!({"cmd": "reinstate", "dst": dst}), "ok"),
                3 => (serde_json::json!({"cmd": "nonsense"}), "error"),
                _ => (serde_json::json!({"cmd": "ping"}), "pong"),
            };
            let mut cmd = cmd;
            cmd["id"] = serde_json::json!(i);
            burst.push_str(&cmd.to_string());
            burst.push('\n');
            expected.push(reply);
        }
        // The whole burst, then the half-close, before a single byte is read.
        let writer = tokio::spawn(async move {
            write.write_all(burst.as_bytes()).await.unwrap();
            write.shutdown().await.unwrap();
            write
        });
        let mut lines = BufReader::new(read).lines();
        let hello = lines.next_line().await.unwrap().expect("hello");
        assert!(hello.starts_with(r#"{"type":"hello""#), "{hello:.200}");
        for (i, kind) in expected.iter().enumerate() {
            let line = lines
                .next_line()
                .await
                .unwrap_or_else(|e| panic!("reading reply {i}: {e}"))
                .unwrap_or_else(|| panic!("the stream ended after {i} of {COMMANDS} replies"));
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("reply {i} is not whole JSON ({e}): {line:.200}"));
            assert_eq!(v["id"], i, "reply {i} in order: {line:.200}");
            assert_eq!(v["type"], *kind, "reply {i}: {line:.200}");
            if *kind == "snapshot" {
                assert_eq!(v["destinations"].as_array().map(Vec::len), Some(3_000));
            }
        }
        assert_eq!(lines.next_line().await.unwrap(), None, "then the end");
        drop(writer.await.unwrap());
        session.await.expect("session");
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

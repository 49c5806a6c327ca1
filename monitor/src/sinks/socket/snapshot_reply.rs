//! The `snapshot` reply, written to the client a chunk at a time.
//!
//! A snapshot of a large table is large (hundreds of bytes per destination). Rendering
//! it whole — as one `serde_json::Value` tree, then one `String` — cost several KiB per
//! destination at once, and the allocator kept that high-water mark: a soak's RSS
//! followed the table up (issue #18). Here only the few top-level fields go through a
//! `Value`; the destinations are rendered one by one (each through its own small
//! `Value`, so keys come out in the same order as before) into a buffer that the
//! session's writer sends whenever it holds [`CHUNK`] bytes, and each destination is
//! dropped once written. The bytes on the wire are exactly those of
//! `protocol::reply(serde_json::to_value(snapshot) + type + server, id)`.
//!
//! Rendering 12 000 destinations takes seconds in a debug build, so it is not done on
//! the socket server's thread, where every session and the accept loop run: [`render`]
//! runs it on the server runtime's blocking pool (at most [`RENDERERS`] at once; more
//! wait their turn) and hands the chunks over a queue of [`QUEUED_CHUNKS`], so a
//! renderer is never more than that ahead of its client.

use serde_json::Value;
use tokio::sync::mpsc;

use crate::policy::snapshot::{DestinationView, PolicySnapshot};

/// Bytes rendered before the writer sends them.
pub const CHUNK: usize = 64 * 1024;
/// Snapshots rendered at once (the socket runtime's blocking threads).
pub const RENDERERS: usize = 2;
/// Rendered chunks waiting for the writer, per snapshot.
const QUEUED_CHUNKS: usize = 2;

/// Part of a reply's line.
pub struct Chunk {
    pub bytes: Vec<u8>,
    /// The chunk ends the line (its newline included).
    pub last: bool,
}

/// Renders `reply` on the runtime's blocking pool; its chunks, in order, until the one
/// marked `last`. Dropping the receiver stops the rendering at the next chunk.
pub fn render(mut reply: SnapshotReply) -> mpsc::Receiver<Chunk> {
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut bytes = Vec::with_capacity(CHUNK + 4096);
            let more = reply.fill(&mut bytes);
            let last = !more;
            if tx.blocking_send(Chunk { bytes, last }).is_err() || last {
                return;
            }
        }
    });
    rx
}

/// A `snapshot` reply being written.
pub struct SnapshotReply {
    /// Everything up to and including `"destinations":[`.
    head: String,
    destinations: std::vec::IntoIter<DestinationView>,
    /// Whether a destination has been written (a comma precedes the next).
    first_written: bool,
    /// From the array's `]` to the line's newline.
    tail: String,
    head_done: bool,
}

impl SnapshotReply {
    /// The reply to `snapshot` with the socket server's counters and the request's id.
    pub fn new(mut snapshot: PolicySnapshot, server: Value, id: Option<&Value>) -> Self {
        let destinations = std::mem::take(&mut snapshot.destinations);
        let mut value = serde_json::to_value(&snapshot).unwrap_or(Value::Null);
        let map = match &mut value {
            Value::Object(map) => map,
            _ => unreachable!("a struct serialises to a JSON object"),
        };
        map.remove("id");
        map.remove("type");
        map.insert("server".into(), server);
        // The order `protocol::reply` writes: type, id, then the object's own order.
        let mut fields: Vec<(&str, Option<&Value>)> = vec![("type", None)];
        if id.is_some() {
            fields.push(("id", id));
        }
        fields.extend(map.iter().map(|(k, v)| (k.as_str(), Some(v))));
        let mut head = String::from("{");
        let mut tail = String::new();
        let mut in_tail = false;
        for (i, (key, value)) in fields.into_iter().enumerate() {
            let out = if in_tail { &mut tail } else { &mut head };
            if i > 0 {
                out.push(',');
            }
            out.push_str(&Value::String(key.to_owned()).to_string());
            out.push(':');
            match (key, value) {
                ("type", None) => out.push_str("\"snapshot\""),
                ("destinations", _) => {
                    out.push('[');
                    in_tail = true;
                    tail.push(']');
                }
                (_, Some(value)) => out.push_str(&value.to_string()),
                (_, None) => out.push_str("null"),
            }
        }
        let out = if in_tail { &mut tail } else { &mut head };
        out.push_str("}\n");
        SnapshotReply {
            head,
            destinations: destinations.into_iter(),
            first_written: false,
            tail,
            head_done: false,
        }
    }

    /// Appends the next part of the line to `buf` until it holds at least [`CHUNK`]
    /// bytes or the line is complete; `false` once the line (newline included) is in.
    pub fn fill(&mut self, buf: &mut Vec<u8>) -> bool {
        if !self.head_done {
            buf.extend_from_slice(self.head.as_bytes());
            self.head = String::new();
            self.head_done = true;
        }
        while buf.len() < CHUNK {
            let Some(destination) = self.destinations.next() else {
                buf.extend_from_slice(self.tail.as_bytes());
                self.tail = String::new();
                return false;
            };
            if self.first_written {
                buf.push(b',');
            }
            self.first_written = true;
            let value = serde_json::to_value(&destination).unwrap_or(Value::Null);
            // Writing a `Value` to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *buf, &value);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        policy::snapshot::fixture::fed,
        server::protocol,
        source::event::{ConnectRecord, Outcome},
    };

    /// The line as the session wrote it before it was streamed.
    fn whole(snapshot: &PolicySnapshot, server: &Value, id: Option<&Value>) -> String {
        let mut value = serde_json::to_value(snapshot).expect("snapshot serialises");
        let Value::Object(map) = &mut value else {
            panic!("a snapshot is an object")
        };
        map.insert("type".into(), "snapshot".into());
        map.insert("server".into(), server.clone());
        protocol::reply(value, id) + "\n"
    }

    fn streamed(snapshot: PolicySnapshot, server: Value, id: Option<&Value>) -> (String, usize) {
        let mut reply = SnapshotReply::new(snapshot, server, id);
        let mut out = Vec::new();
        let mut chunks = 0;
        loop {
            let mut buf = Vec::new();
            let more = reply.fill(&mut buf);
            chunks += 1;
            out.extend_from_slice(&buf);
            if !more {
                break;
            }
        }
        (String::from_utf8(out).expect("UTF-8"), chunks)
    }

    /// A snapshot of `n` destinations, some failing, some ejected, from the real engine.
    fn snapshot_of(n: u16) -> PolicySnapshot {
        let established = |_, k, rec: &mut ConnectRecord| {
            rec.outcome = if k % 3 == 0 {
                Outcome::Established
            } else {
                Outcome::Refused
            };
        };
        let (mut policy, now, _) = fed(n, 250, |i| 1 + u32::from(i % 7), established);
        policy.snapshot(now)
    }

    #[test]
    fn streamed_bytes_equal_the_whole_line() {
        let server = json!({"clients": 1, "accepted": 2});
        for (n, id) in [
            (0, None),
            (1, Some(json!(7))),
            (3, Some(json!("a\"b"))),
            (2000, None),
        ] {
            let snapshot = snapshot_of(n);
            let expected = whole(&snapshot, &server, id.as_ref());
            let (got, chunks) = streamed(snapshot, server.clone(), id.as_ref());
            assert_eq!(got, expected, "{n} destinations, id {id:?}: bytes differ");
            if n == 2000 {
                assert!(
                    chunks > 2,
                    "2000 destinations ({} bytes) came in {chunks} chunk(s), expected several",
                    got.len()
                );
            }
        }
    }
}

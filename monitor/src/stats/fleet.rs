//! The fleet link's counters (`[fleet]`, sinks::fleet): kept by the link as atomics,
//! read by the pipeline into the `stats` line (`"fleet":{...}`) and by the Prometheus
//! endpoint at scrape time. Every verdict the link does not carry out is counted here
//! with its reason.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Why a verdict of another host changed nothing here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IgnoredReason {
    /// The evidence was not trusted (`"trusted":false`).
    Untrusted,
    /// The host was (or is, by its last heartbeat) in a local outage.
    LocalOutage,
    /// `quorum` mode: fewer than `quorum` hosts agree within `window` yet.
    QuorumPending,
    /// This host's own message, back from the subject (or a `reason: fleet` one).
    Echo,
    /// Its term had ended when it arrived.
    Expired,
    /// The destination was already ejected here (another vote, or this host's own).
    AlreadyEjected,
    /// `observe` mode applies nothing.
    Observe,
    /// The view holds votes for its maximum number of destinations.
    Full,
}

impl IgnoredReason {
    pub const ALL: [IgnoredReason; 8] = [
        IgnoredReason::Untrusted,
        IgnoredReason::LocalOutage,
        IgnoredReason::QuorumPending,
        IgnoredReason::Echo,
        IgnoredReason::Expired,
        IgnoredReason::AlreadyEjected,
        IgnoredReason::Observe,
        IgnoredReason::Full,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IgnoredReason::Untrusted => "untrusted",
            IgnoredReason::LocalOutage => "local_outage",
            IgnoredReason::QuorumPending => "quorum_pending",
            IgnoredReason::Echo => "echo",
            IgnoredReason::Expired => "expired",
            IgnoredReason::AlreadyEjected => "already_ejected",
            IgnoredReason::Observe => "observe",
            IgnoredReason::Full => "full",
        }
    }
}

/// Why one of this host's own verdicts never reached NATS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DroppedReason {
    /// The outbound queue (`fleet.queue`) was full: the newest is dropped.
    QueueFull,
    /// NATS was unreachable or the publish failed or timed out.
    Unreachable,
    /// The link fell behind the event bus and missed the decision.
    Lagged,
}

impl DroppedReason {
    pub const ALL: [DroppedReason; 3] = [
        DroppedReason::QueueFull,
        DroppedReason::Unreachable,
        DroppedReason::Lagged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DroppedReason::QueueFull => "queue_full",
            DroppedReason::Unreachable => "unreachable",
            DroppedReason::Lagged => "lagged",
        }
    }
}

/// The live counters, shared by the link (writer) and the readers.
#[derive(Debug, Default)]
pub struct FleetCounters {
    published: AtomicU64,
    received: AtomicU64,
    applied: AtomicU64,
    lifted: AtomicU64,
    guarded: AtomicU64,
    invalid: AtomicU64,
    ignored: [AtomicU64; IgnoredReason::ALL.len()],
    dropped: [AtomicU64; DroppedReason::ALL.len()],
    kv_put_failures: AtomicU64,
    kv_put_retries: AtomicU64,
    reconnects: AtomicU64,
    resyncs: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Methods that count one event each: `method => field;`.
macro_rules! one_event {
    ($($(#[$doc:meta])* $method:ident => $field:ident;)*) => {
        impl FleetCounters {
            $($(#[$doc])* pub fn $method(&self) {
                add(&self.$field, 1);
            })*
        }
    };
}

one_event! {
    /// An own verdict handed to NATS (core publish succeeded).
    published => published;
    /// A valid message of another host.
    received => received;
    /// A remote evict ejected a destination here.
    applied => applied;
    /// A remote reinstate (or the end of the last vote) lifted a fleet ejection here.
    lifted => lifted;
    /// A remote evict withheld by `max_ejection_percent` (or no room in the table).
    guarded => guarded;
    /// A message that failed to decode.
    invalid => invalid;
    /// A KV put or delete failed or timed out (it is retried).
    kv_put_failed => kv_put_failures;
    /// A failed KV put or delete was tried again.
    kv_put_retried => kv_put_retries;
    /// The connection to NATS came back after it was lost.
    reconnected => reconnects;
    /// The KV bucket was read back after a (re)connect.
    resynced => resyncs;
}

impl FleetCounters {
    pub fn ignored(&self, reason: IgnoredReason) {
        add(&self.ignored[reason as usize], 1);
    }

    pub fn dropped(&self, reason: DroppedReason, n: u64) {
        add(&self.dropped[reason as usize], n);
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(get).sum()
    }

    /// A consistent-enough copy for a `stats` line or a scrape.
    pub fn snapshot(&self) -> FleetStats {
        let ignored = |r: IgnoredReason| get(&self.ignored[r as usize]);
        let dropped = |r: DroppedReason| get(&self.dropped[r as usize]);
        FleetStats {
            published: get(&self.published),
            received: get(&self.received),
            applied: get(&self.applied),
            lifted: get(&self.lifted),
            guarded: get(&self.guarded),
            invalid: get(&self.invalid),
            ignored: IgnoredCounts {
                untrusted: ignored(IgnoredReason::Untrusted),
                local_outage: ignored(IgnoredReason::LocalOutage),
                quorum_pending: ignored(IgnoredReason::QuorumPending),
                echo: ignored(IgnoredReason::Echo),
                expired: ignored(IgnoredReason::Expired),
                already_ejected: ignored(IgnoredReason::AlreadyEjected),
                observe: ignored(IgnoredReason::Observe),
                full: ignored(IgnoredReason::Full),
            },
            dropped: DroppedCounts {
                queue_full: dropped(DroppedReason::QueueFull),
                unreachable: dropped(DroppedReason::Unreachable),
                lagged: dropped(DroppedReason::Lagged),
            },
            kv_put_failures: get(&self.kv_put_failures),
            kv_put_retries: get(&self.kv_put_retries),
            reconnects: get(&self.reconnects),
            resyncs: get(&self.resyncs),
        }
    }
}

/// `"fleet":{...}` in the `stats` line: totals since the agent started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct FleetStats {
    /// Own verdicts (evict, reinstate) handed to NATS.
    pub published: u64,
    /// Valid messages of other hosts (evict, reinstate, heartbeat).
    pub received: u64,
    /// Remote evicts that ejected a destination here.
    pub applied: u64,
    /// Fleet ejections lifted here by the fleet (the last vote's reinstate).
    pub lifted: u64,
    /// Remote evicts withheld by `max_ejection_percent` (or a full table).
    pub guarded: u64,
    /// Messages that failed to decode.
    pub invalid: u64,
    pub ignored: IgnoredCounts,
    pub dropped: DroppedCounts,
    /// KV puts and deletes that failed or timed out; each is retried.
    pub kv_put_failures: u64,
    pub kv_put_retries: u64,
    /// Connections to NATS restored after a loss.
    pub reconnects: u64,
    /// KV bucket read-backs (one per connect).
    pub resyncs: u64,
}

/// Remote evicts that changed nothing here, by reason ([`IgnoredReason`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct IgnoredCounts {
    pub untrusted: u64,
    pub local_outage: u64,
    pub quorum_pending: u64,
    pub echo: u64,
    pub expired: u64,
    pub already_ejected: u64,
    pub observe: u64,
    pub full: u64,
}

/// Own verdicts that never reached NATS, by reason ([`DroppedReason`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct DroppedCounts {
    pub queue_full: u64,
    pub unreachable: u64,
    pub lagged: u64,
}

impl IgnoredCounts {
    pub fn total(&self) -> u64 {
        self.untrusted
            + self.local_outage
            + self.quorum_pending
            + self.echo
            + self.expired
            + self.already_ejected
            + self.observe
            + self.full
    }
}

impl DroppedCounts {
    pub fn total(&self) -> u64 {
        self.queue_full + self.unreachable + self.lagged
    }
}

impl FleetStats {
    /// ` fleet_published=.. ...` for the text `stats` line.
    pub fn to_text(self) -> String {
        format!(
            " fleet_published={} fleet_received={} fleet_applied={} fleet_lifted={} fleet_guarded={} \
             fleet_ignored={} (untrusted={} local_outage={} quorum_pending={} echo={} expired={} \
             already_ejected={} observe={} full={}) fleet_dropped={} (queue_full={} unreachable={} \
             lagged={}) fleet_invalid={} fleet_kv_put_failures={} fleet_reconnects={} fleet_resyncs={}",
            self.published,
            self.received,
            self.applied,
            self.lifted,
            self.guarded,
            self.ignored.total(),
            self.ignored.untrusted,
            self.ignored.local_outage,
            self.ignored.quorum_pending,
            self.ignored.echo,
            self.ignored.expired,
            self.ignored.already_ejected,
            self.ignored.observe,
            self.ignored.full,
            self.dropped.total(),
            self.dropped.queue_full,
            self.dropped.unreachable,
            self.dropped.lagged,
            self.invalid,
            self.kv_put_failures,
            self.reconnects,
            self.resyncs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_reach_the_snapshot_by_reason() {
        let c = FleetCounters::default();
        c.published();
        c.received();
        c.received();
        c.applied();
        c.ignored(IgnoredReason::Echo);
        c.ignored(IgnoredReason::Untrusted);
        c.ignored(IgnoredReason::QuorumPending);
        c.ignored(IgnoredReason::LocalOutage);
        c.dropped(DroppedReason::QueueFull, 3);
        c.dropped(DroppedReason::Lagged, 2);
        c.kv_put_failed();
        c.kv_put_retried();
        c.reconnected();
        let s = c.snapshot();
        assert_eq!(s.published, 1);
        assert_eq!(s.received, 2);
        assert_eq!(s.ignored.total(), 4);
        assert_eq!(s.ignored.echo, 1);
        assert_eq!(s.dropped.queue_full, 3);
        assert_eq!(c.dropped_total(), 5);
        assert_eq!(s.kv_put_failures, 1);
        assert_eq!(s.reconnects, 1);
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains(
                "\"ignored\":{\"untrusted\":1,\"local_outage\":1,\"quorum_pending\":1,\"echo\":1"
            ),
            "{json}"
        );
        assert!(json.contains("\"dropped\":{\"queue_full\":3"), "{json}");
        let text = s.to_text();
        assert!(text.contains("fleet_dropped=5 (queue_full=3"), "{text}");
        assert!(text.contains("fleet_kv_put_failures=1"), "{text}");
    }
}

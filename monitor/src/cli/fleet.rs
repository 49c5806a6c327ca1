//! `connmon fleet`: the hosts of this agent's fleet, read from the NATS KV bucket the
//! agents share (docs/fleet.md): each host's last heartbeat, mode, counts, and how many
//! ejections it has in the bucket. It reads the `[fleet]` section of the config file,
//! so it needs no running agent here.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    config::Config,
    sinks::fleet::{
        message::{self, FleetMessage, Heartbeat},
        read_bucket,
    },
};

/// `connmon fleet`.
#[derive(Args, Debug)]
pub struct FleetArgs {
    /// Config file with the `[fleet]` section [default: /etc/connmon/connmon.toml].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print JSON (one object per host) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, serde::Serialize)]
struct HostRow {
    host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat: Option<Heartbeat>,
    /// Seconds since the last heartbeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    age_s: Option<f64>,
    /// Ejections of this host in the bucket now.
    ejections: u64,
}

pub fn fleet(args: &FleetArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    config.validate()?;
    let fleet = &config.fleet;
    if !fleet.enabled() {
        bail!("[fleet] servers is empty in the config file: the fleet is off");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let rows = runtime.block_on(async {
        let options = fleet
            .connect_options(&format!("{}-cli", fleet.host()))
            .await
            .context("reading the credentials")?;
        // The options retry the initial connect in the background: wait for it here.
        let client = options.connect(fleet.servers.clone()).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while client.connection_state() != async_nats::connection::State::Connected {
            if tokio::time::Instant::now() > deadline {
                bail!("cannot connect to NATS {}", fleet.servers.join(","));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let js = async_nats::jetstream::new(client);
        let kv = js.get_key_value(fleet.bucket()).await.with_context(|| {
            format!(
                "KV bucket {} (no agent of cluster {:?} has connected yet?)",
                fleet.bucket(),
                fleet.cluster
            )
        })?;
        let mut rows: BTreeMap<String, HostRow> = BTreeMap::new();
        // One ordered read of the whole bucket (as the agents' resync), not a request
        // per key.
        let values = read_bucket(&kv)
            .await
            .map_err(|e| anyhow::anyhow!("reading KV bucket {}: {e}", fleet.bucket()))?;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        for (_, bytes) in values {
            match message::decode(&bytes) {
                Ok(FleetMessage::Heartbeat(h)) => {
                    let row = rows.entry(h.host.clone()).or_default();
                    row.host = h.host.clone();
                    row.age_s = Some(now_ms.saturating_sub(h.ts_ms) as f64 / 1000.0);
                    row.heartbeat = Some(h);
                }
                Ok(FleetMessage::Evict(e)) if e.until_ms > now_ms => {
                    let row = rows.entry(e.host.clone()).or_default();
                    row.host = e.host.clone();
                    row.ejections += 1;
                }
                _ => {}
            }
        }
        anyhow::Ok(rows.into_values().collect::<Vec<_>>())
    })?;
    if args.json {
        for row in &rows {
            println!("{}", serde_json::to_string(row)?);
        }
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:>10} {:>8} {:>8} {:>10} {:>8} {:>8} {:<6}",
        "HOST",
        "MODE",
        "HEARTBEAT",
        "EJECTED",
        "IN KV",
        "PUBLISHED",
        "APPLIED",
        "DROPPED",
        "OUTAGE"
    );
    for row in rows {
        let h = row.heartbeat.as_ref();
        let dash = || "-".to_owned();
        println!(
            "{:<20} {:<8} {:>10} {:>8} {:>8} {:>10} {:>8} {:>8} {:<6}",
            row.host,
            h.map_or_else(dash, |h| format!("{:?}", h.mode).to_lowercase()),
            row.age_s.map_or_else(dash, |a| format!("{a:.1}s ago")),
            h.map_or_else(dash, |h| h.ejected.to_string()),
            row.ejections,
            h.map_or_else(dash, |h| h.published.to_string()),
            h.map_or_else(dash, |h| h.applied.to_string()),
            h.map_or_else(dash, |h| h.dropped.to_string()),
            h.map_or_else(dash, |h| if h.local_outage {
                "yes".into()
            } else {
                "no".into()
            }),
        );
    }
    Ok(())
}

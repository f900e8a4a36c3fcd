//! When to build a snapshot. A snapshot costs a pass over the whole state, so building one
//! every fixed number of entries costs more the larger the state: with a few hundred MiB of
//! state (mostly audit records before they are archived) a build every 10,000 entries kept a
//! loaded node writing snapshots most of the time, and throughput fell by half or more over
//! a minute of load. Here a build waits until the log since the last snapshot holds at least
//! [`RaftTuning::snapshot_logs_since_last`] entries *and* at least
//! [`RaftTuning::snapshot_log_percent`] of the state's size in bytes: the cost of
//! snapshots stays proportional to what is written, whatever the state's size, and the log
//! kept meanwhile is bounded by that share of the state. A log that grows past 64 times the
//! entry minimum is snapshotted whatever the sizes say.

use std::sync::Weak;
use std::time::Duration;

use crate::db::{cf, Db, CF_KV, CF_LOG, CF_SM};
use crate::tuning::RaftTuning;
use crate::types::Raft;

/// How often the policy looks.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Entries since the last snapshot beyond which one is built whatever the sizes.
const ENTRY_CAP_FACTOR: u64 = 64;

/// What the policy weighs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LogAndState {
    /// Entries appended since the last snapshot.
    pub entries_since: u64,
    /// Entries the log holds (since its last purge).
    pub entries_held: u64,
    /// Bytes the log holds (an estimate).
    pub log_bytes: u64,
    /// Bytes of the replicated state (an estimate).
    pub state_bytes: u64,
}

/// Whether a snapshot is due.
pub(crate) fn due(s: LogAndState, min_entries: u64, percent: u64) -> bool {
    if s.entries_since < min_entries.max(1) {
        return false;
    }
    if s.entries_since >= min_entries.max(1).saturating_mul(ENTRY_CAP_FACTOR) {
        return true;
    }
    let bytes_since = s.log_bytes as u128 * s.entries_since as u128 / s.entries_held.max(1) as u128;
    bytes_since * 100 >= s.state_bytes as u128 * percent as u128
}

/// Live bytes of a column family: its SST files' live data and its memtables (estimates).
fn cf_bytes(db: &Db, name: &str) -> u64 {
    let h = cf(db, name);
    let prop = |p: &str| db.property_int_value_cf(h, p).ok().flatten().unwrap_or(0);
    prop("rocksdb.estimate-live-data-size") + prop("rocksdb.cur-size-all-mem-tables")
}

/// Triggers snapshots when [`due`], until the database closes or `stop` is set.
pub(crate) async fn run(
    raft: Raft,
    db: Weak<Db>,
    tuning: RaftTuning,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let Some(db) = db.upgrade() else { return };
        let m = raft.metrics().borrow().clone();
        let last = m.last_log_index.unwrap_or(0);
        let snapshot = m.snapshot.map_or(0, |s| s.index);
        let purged = m.purged.map_or(0, |p| p.index);
        let state = LogAndState {
            entries_since: last.saturating_sub(snapshot),
            entries_held: last.saturating_sub(purged),
            log_bytes: cf_bytes(&db, CF_LOG),
            state_bytes: cf_bytes(&db, CF_KV) + cf_bytes(&db, CF_SM),
        };
        drop(db);
        if due(
            state,
            tuning.snapshot_logs_since_last,
            tuning.snapshot_log_percent,
        ) {
            // A trigger while a build runs is dropped; the next look tries again.
            if let Err(e) = raft.trigger().snapshot().await {
                tracing::warn!("could not start a snapshot: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(entries_since: u64, entries_held: u64, log_bytes: u64, state_bytes: u64) -> LogAndState {
        LogAndState {
            entries_since,
            entries_held,
            log_bytes,
            state_bytes,
        }
    }

    #[test]
    fn a_snapshot_waits_for_enough_entries_and_a_share_of_the_state() {
        // Too few entries, whatever the bytes.
        assert!(!due(s(9_999, 9_999, 1 << 30, 1), 10_000, 25));
        // Small state: the entry minimum decides.
        assert!(due(s(10_000, 10_000, 5 << 20, 10 << 20), 10_000, 25));
        // Large state: 10,000 entries of 5 MiB are 1% of 500 MiB, not due; 25% is.
        assert!(!due(s(10_000, 10_000, 5 << 20, 500 << 20), 10_000, 25));
        assert!(due(s(250_000, 250_000, 125 << 20, 500 << 20), 10_000, 25));
        // Entries since the snapshot are a part of what the log holds.
        assert!(!due(s(20_000, 40_000, 200 << 20, 500 << 20), 10_000, 25));
        // The cap: 64 times the minimum builds one anyway.
        assert!(due(s(640_000, 640_000, 1, u64::MAX / 1000), 10_000, 25));
    }
}

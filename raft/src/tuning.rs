//! Raft timing and snapshot settings, with every openraft `Config` field chosen on purpose.

use serde::{Deserialize, Serialize};

/// The Raft knobs an operator may set (config file section `[raft]`). Units are in the names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTuning {
    /// Leader heartbeat period. Default 100 ms, about 10 small messages/s per follower. It is
    /// also how long openraft waits for one AppendEntries answer (a later answer still counts
    /// as contact, see `transport::client`), and 1.5 × it is openraft's tick, the granularity
    /// at which a follower notices that its election timer ran out.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomized election timeout. Default 200 ms. A follower that has
    /// accepted a leader stands for election only after hearing nothing from it for the leader
    /// lease (`election_timeout_max_ms`) *plus* its own timeout, so the shortest silence that
    /// starts an election is min + max = 600 ms, six heartbeats: losing a few heartbeats to a
    /// busy machine never does. Each node draws its timeout once, at start.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout, and the leader lease: for this long
    /// after hearing from a leader a follower refuses to vote for anyone else, so a node cut
    /// off for a while cannot depose a working leader when it comes back. Default 400 ms. A
    /// leader SIGKILL is followed by an election after 600–800 ms of silence (whichever
    /// survivor's timer runs out first, plus up to one tick), about 0.7 s median to the first
    /// acknowledged write (BENCHMARKS.md). Larger values tolerate longer stalls of the leader
    /// at the price of a slower failover; `standby_after_ms` must be at least this.
    pub election_timeout_max_ms: u64,
    /// A snapshot is built once at least this many log entries came since the last one
    /// (and `snapshot_log_percent` of the state's size, below). Default 10 000: bounds
    /// replay time on restart and the log's disk use while the state is small.
    pub snapshot_logs_since_last: u64,
    /// … and once those entries add up to at least this percentage of the state's size in
    /// bytes. Default 25: a snapshot costs a pass over the whole state, so a large state
    /// (hundreds of MiB of audit records before they are archived) is snapshotted after
    /// proportionally more writes, and its snapshots cost at most four times what was
    /// written; the log kept meanwhile is at most about a quarter of the state. 0 builds
    /// after `snapshot_logs_since_last` entries whatever the sizes. After 64 times
    /// `snapshot_logs_since_last` entries a snapshot is built anyway.
    pub snapshot_log_percent: u64,
    /// Entries kept in the log after a snapshot, so a briefly lagging follower catches up
    /// from the log instead of a full snapshot. Default 1 000.
    pub max_in_snapshot_log_to_keep: u64,
    /// Timeout of one snapshot chunk RPC. Default 2 000 ms.
    pub install_snapshot_timeout_ms: u64,
    /// Max entries in one AppendEntries RPC. Default 256: bounds message size (with 1 MiB
    /// bodies at most, a message stays well under the transport's frame limit).
    pub max_payload_entries: u64,
    /// A follower more than this many entries behind is sent a snapshot instead of log
    /// entries. Default 5 000.
    pub replication_lag_threshold: u64,
    /// Snapshot chunk size in bytes. Default 1 MiB: bounded memory on both ends.
    pub snapshot_max_chunk_bytes: u64,
    /// Entries deleted per purge. Default 256.
    pub purge_batch_size: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 400,
            snapshot_logs_since_last: 10_000,
            snapshot_log_percent: 25,
            max_in_snapshot_log_to_keep: 1_000,
            install_snapshot_timeout_ms: 2_000,
            max_payload_entries: 256,
            replication_lag_threshold: 5_000,
            snapshot_max_chunk_bytes: 1 << 20,
            purge_batch_size: 256,
        }
    }
}

impl RaftTuning {
    /// The openraft config these settings describe, validated by openraft itself.
    pub fn to_openraft(&self, cluster_name: &str) -> Result<openraft::Config, String> {
        let config = openraft::Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            max_payload_entries: self.max_payload_entries,
            replication_lag_threshold: self.replication_lag_threshold,
            // The engine decides (`engine/snapshot_policy.rs`): by entries and by bytes.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            snapshot_max_chunk_size: self.snapshot_max_chunk_bytes,
            max_in_snapshot_log_to_keep: self.max_in_snapshot_log_to_keep,
            purge_batch_size: self.purge_batch_size,
            // Ticks, heartbeats and elections stay on: the harness cuts the network instead
            // of switching the protocol off, so tests exercise what production runs.
            enable_tick: true,
            enable_heartbeat: true,
            enable_elect: true,
            ..Default::default()
        };
        config.validate().map_err(|e| e.to_string())
    }
}

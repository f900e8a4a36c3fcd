//! The node's local audit spool: append-only JSON-lines segment files under
//! `<data_dir>/audit/`, hash-chained, fsynced before any append is acknowledged.
//!
//! # Durability contract
//!
//! One writer thread owns the files. It takes every append waiting at that moment, chains and
//! writes them, calls `fdatasync` once, and only then answers all of them (group commit: many
//! concurrent requests share one fsync). A record is readable by the shipper only once it is
//! durable. A crash can leave a torn last line that was never acknowledged; opening the spool
//! truncates it. If a write or sync fails, the spool refuses every later append until the node
//! restarts (after a failed fsync the file's state is unknown), and says why in `failure()`.
//! The spool's epoch file (`epoch`, a random id) is written, fsynced and renamed into place
//! before the first record.
//!
//! # Tamper evidence
//!
//! Each line carries its chain fields in clear, its body sealed to the cluster's audit
//! spool key, and — whenever the node is unsealed — a MAC over (node, epoch, seq, hash)
//! under a key derived from the keyring. Since each hash covers the previous one, a valid
//! MAC vouches for every record before it: someone with disk access, who has neither key,
//! cannot rewrite or insert records without the next MAC failing, and cannot turn a sealed
//! body into a clear one (a clear body after the first sealed or MAC'd line is refused).
//! Records written while the node was sealed carry no MAC and are reported as such. Cutting
//! the tail is caught by the anchor the shipper writes into the replicated log.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use zeroize::Zeroizing;

use super::record::{AuditEvent, AuditRecord, ChainProblem, GENESIS};
use super::sealing::SpoolKey;

mod files;
mod line;
mod writer;

use files::{first_sealed, list_segments, load_epoch, recover_tail};
use line::SpoolLine;
pub use line::{check_segment, line_mac};
use writer::Writer;

/// Records per segment file; segments wholly merged into the cluster log are deleted.
const SEGMENT_RECORDS: u64 = 10_000;
/// Most appends one group commit takes.
const MAX_GROUP: usize = 4096;

type Reply = tokio::sync::oneshot::Sender<Result<AuditRecord, SpoolError>>;

/// Why the spool could not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    /// A write or fsync failed: the spool refuses every append until the node restarts
    /// (fail closed); the text says what failed.
    #[error("audit spool unavailable: {0}")]
    Unavailable(String),
    /// The writer thread is gone (the node is shutting down).
    #[error("audit spool writer has stopped")]
    Stopped,
    /// The record asked for was merged and pruned.
    #[error("audit record {0} is no longer in the spool")]
    Pruned(u64),
    /// A sealed body was asked for without the spool key (the vault is sealed).
    #[error("the audit spool key is needed (the vault is sealed)")]
    Sealed,
    /// A line fails its checks: unreadable, a clear body where none may be, a MAC or a
    /// sealed body that does not verify.
    #[error("audit spool record {seq} failed authentication: {why}")]
    Tampered {
        /// The record's sequence number (0 when the line could not be read at all).
        seq: u64,
        /// What is wrong.
        why: String,
    },
    /// Reading or writing the spool's files failed.
    #[error("audit spool: {0}")]
    Io(String),
}

impl From<String> for SpoolError {
    fn from(why: String) -> Self {
        SpoolError::Io(why)
    }
}

/// Counters for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Records appended.
    pub appends: AtomicU64,
    /// Group commits (fsyncs).
    pub fsyncs: AtomicU64,
    /// Nanoseconds spent in fsync.
    pub fsync_nanos: AtomicU64,
    /// Nanoseconds callers spent waiting for their append to become durable, summed.
    pub wait_nanos: AtomicU64,
}

/// State shared between callers, the writer thread and readers.
struct Shared {
    /// Highest durable sequence number.
    durable: AtomicU64,
    /// Why the spool stopped accepting appends, if it did.
    failure: Mutex<Option<String>>,
    /// Segment first-seq -> file.
    segments: Mutex<BTreeMap<u64, PathBuf>>,
    /// Wakes the shipper when records become durable.
    notify: tokio::sync::Notify,
    /// Counters.
    stats: SpoolStats,
    /// Public key bodies are sealed to; `None` until the vault is initialized.
    recipient: Mutex<Option<[u8; 32]>>,
    /// Where the last `read_from` stopped: (next seq, segment first seq, byte offset), so the
    /// shipper reads each segment once instead of rescanning it per batch.
    read_pos: Mutex<Option<(u64, u64, u64)>>,
    /// The MAC key (from the keyring) while the node is unsealed.
    mac_key: Mutex<Option<Zeroizing<[u8; 32]>>>,
    /// The durable head: last sequence number and its hash.
    head: Mutex<(u64, String)>,
    /// Sequence number of the first line with a sealed body (0: none yet). No line after it
    /// may have a clear body: once the spool key exists, every body is sealed.
    sealed_from: AtomicU64,
}

/// The spool handle.
pub struct Spool {
    /// Origin node id written into every record.
    node: u64,
    /// This spool's epoch (random id, from the `epoch` file).
    epoch: String,
    /// Appends on their way to the writer thread.
    tx: Mutex<mpsc::Sender<(AuditEvent, Reply)>>,
    /// Shared state.
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (creating) the spool in `dir` for node `node` and starts its writer thread.
    pub fn open(dir: &Path, node: u64) -> Result<Self, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let segments = list_segments(dir)?;
        let last = match segments.iter().next_back() {
            Some((_, path)) => recover_tail(path)?,
            None => None,
        };
        let (last_seq, last_hash) = last.unwrap_or((0, GENESIS.to_string()));
        let epoch = load_epoch(dir)?;
        let shared = Arc::new(Shared {
            durable: AtomicU64::new(last_seq),
            failure: Mutex::new(None),
            sealed_from: AtomicU64::new(first_sealed(&segments)),
            segments: Mutex::new(segments),
            notify: tokio::sync::Notify::new(),
            stats: SpoolStats::default(),
            read_pos: Mutex::new(None),
            recipient: Mutex::new(None),
            mac_key: Mutex::new(None),
            head: Mutex::new((last_seq, last_hash.clone())),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            dir: dir.to_path_buf(),
            node,
            epoch: epoch.clone(),
            last_seq,
            last_hash,
            file: None,
            shared: shared.clone(),
        };
        std::thread::Builder::new()
            .name("coffer-audit-spool".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("starting the spool writer: {e}"))?;
        Ok(Self {
            node,
            epoch,
            tx: Mutex::new(tx),
            shared,
        })
    }

    /// This spool's epoch id.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// MACs every later record under `key` (the node unsealed), or stops (`None`: sealed).
    pub fn set_mac_key(&self, key: Option<Zeroizing<[u8; 32]>>) {
        if let Ok(mut k) = self.shared.mac_key.lock() {
            *k = key;
        }
    }

    /// The durable head: last sequence number and its hash (0 and the genesis hash if empty).
    pub fn head(&self) -> (u64, String) {
        self.shared
            .head
            .lock()
            .map(|h| h.clone())
            .unwrap_or((0, GENESIS.to_string()))
    }

    fn mac_key(&self) -> Option<Zeroizing<[u8; 32]>> {
        self.shared.mac_key.lock().ok().and_then(|k| k.clone())
    }

    /// Appends an event; resolves once its record is durable.
    pub async fn append(&self, event: AuditEvent) -> Result<AuditRecord, SpoolError> {
        if let Some(why) = self.failure_reason() {
            return Err(SpoolError::Unavailable(why));
        }
        let started = Instant::now();
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .lock()
            .map_err(|_| SpoolError::Stopped)?
            .send((event, reply))
            .map_err(|_| SpoolError::Stopped)?;
        let result = rx.await.map_err(|_| SpoolError::Stopped)?;
        let waited = started.elapsed().as_nanos() as u64;
        self.shared
            .stats
            .wait_nanos
            .fetch_add(waited, Ordering::Relaxed);
        result
    }

    /// Seals every later record body to `public` (the cluster's audit spool key).
    pub fn set_recipient(&self, public: [u8; 32]) {
        if let Ok(mut r) = self.shared.recipient.lock() {
            *r = Some(public);
        }
    }

    /// Why the spool refuses appends, if it does (the whole message).
    pub fn failure(&self) -> Option<String> {
        self.failure_reason()
            .map(|why| SpoolError::Unavailable(why).to_string())
    }

    fn failure_reason(&self) -> Option<String> {
        self.shared.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Highest durable sequence number.
    pub fn last_seq(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Origin node id.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// Counters.
    pub fn stats(&self) -> &SpoolStats {
        &self.shared.stats
    }

    /// Resolves when new records may be durable after it is enabled (or first polled): take
    /// it, `enable()` it, then look at the spool, and no append in between is missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.notify.notified()
    }

    /// Up to `max` durable records from `seq` on, in order; sealed bodies are opened with
    /// `key`.
    pub fn read_from(
        &self,
        seq: u64,
        max: usize,
        key: Option<&SpoolKey>,
    ) -> Result<Vec<AuditRecord>, SpoolError> {
        let durable = self.last_seq();
        if seq > durable || max == 0 {
            return Ok(Vec::new());
        }
        let segments = self
            .shared
            .segments
            .lock()
            .map_err(|e| e.to_string())?
            .clone();
        let cached = *self.shared.read_pos.lock().map_err(|e| e.to_string())?;
        let (mut first, mut offset) = match cached {
            Some((next, first, offset)) if next == seq && segments.contains_key(&first) => {
                (first, offset)
            }
            _ => match segments.range(..=seq).next_back() {
                Some((first, _)) => (*first, 0),
                None => return Err(SpoolError::Pruned(seq)),
            },
        };
        let mac_key = self.mac_key();
        let sealed_from = self.shared.sealed_from.load(Ordering::Acquire);
        let mut out = Vec::new();
        while let Some(path) = segments.get(&first) {
            let next_first = segments.range(first + 1..).next().map(|(n, _)| *n);
            let mut file = match File::open(path) {
                Ok(file) => file,
                // Pruned since the map was read (every record in it merged), and nothing
                // asked for is in it: go on with the next.
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && next_first.is_some_and(|n| n <= seq) =>
                {
                    first = next_first.unwrap_or(first);
                    offset = 0;
                    continue;
                }
                Err(e) => return Err(format!("reading {}: {e}", path.display()).into()),
            };
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| e.to_string())?;
            let mut reader = BufReader::new(file);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .map_err(|e| e.to_string())?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                let rec: SpoolLine =
                    serde_json::from_slice(&line).map_err(|e| SpoolError::Tampered {
                        seq: 0,
                        why: format!("unreadable audit spool line in {}: {e}", path.display()),
                    })?;
                if rec.seq > durable {
                    break;
                }
                offset += n as u64;
                if rec.seq >= seq {
                    rec.authenticate(&self.epoch, mac_key.as_deref(), sealed_from)?;
                    out.push(rec.record(&self.epoch, key)?);
                    if out.len() >= max {
                        let next = out.last().map_or(seq, |r| r.seq + 1);
                        *self.shared.read_pos.lock().map_err(|e| e.to_string())? =
                            Some((next, first, offset));
                        return Ok(out);
                    }
                }
            }
            match segments.range(first + 1..).next() {
                Some((next, _)) => {
                    first = *next;
                    offset = 0;
                }
                None => break,
            }
        }
        let next = out.last().map_or(seq, |r| r.seq + 1);
        *self.shared.read_pos.lock().map_err(|e| e.to_string())? = Some((next, first, offset));
        Ok(out)
    }

    /// Deletes segments whose every record is at or below `seq` (merged into the cluster
    /// log), never the segment being written.
    pub fn prune_through(&self, seq: u64) -> Result<(), SpoolError> {
        let mut segments = self.shared.segments.lock().map_err(|e| e.to_string())?;
        let firsts: Vec<u64> = segments.keys().copied().collect();
        for pair in firsts.windows(2) {
            let (first, next_first) = (pair[0], pair[1]);
            if next_first <= seq + 1 {
                if let Some(path) = segments.remove(&first) {
                    std::fs::remove_file(&path)
                        .map_err(|e| format!("removing {}: {e}", path.display()))?;
                }
            }
        }
        Ok(())
    }

    /// Checks every record still in the spool: the chain links (gaps, forks) from the clear
    /// fields, each MAC (with the node unsealed), and each body against its hash (opening
    /// sealed bodies with `key`). Returns the count, the problems, and how many records
    /// after the first MAC'd one carry no MAC (written while sealed: not authenticated).
    pub fn verify(&self, key: Option<&SpoolKey>) -> Result<SpoolVerdict, SpoolError> {
        let segments = self
            .shared
            .segments
            .lock()
            .map_err(|e| e.to_string())?
            .clone();
        let mut problems = Vec::new();
        let mut count = 0;
        let mut unauthenticated = 0;
        let mut seen_mac = false;
        let mut sealed_from = 0;
        let mac_key = self.mac_key();
        let mut prev: Option<(u64, String)> = None;
        let problem = |seq, kind: &str, detail: String| ChainProblem {
            node: self.node,
            epoch: 0,
            seq,
            kind: kind.into(),
            detail,
        };
        for path in segments.values() {
            let text =
                std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            for (i, raw) in text.split(|b| *b == b'\n').enumerate() {
                if raw.is_empty() {
                    continue;
                }
                let line: SpoolLine = match serde_json::from_slice(raw) {
                    Ok(l) => l,
                    Err(e) => {
                        let seq = prev.as_ref().map_or(0, |p| p.0 + 1);
                        problems.push(problem(
                            seq,
                            "unreadable",
                            format!("{} line {}: {e}", path.display(), i + 1),
                        ));
                        continue;
                    }
                };
                count += 1;
                let (seq, prev_hash, hash) = (line.seq, line.prev_hash.clone(), line.hash.clone());
                if let Some((pseq, phash)) = &prev {
                    if seq != pseq + 1 {
                        problems.push(problem(
                            seq,
                            "gap",
                            format!("expected record {} after {pseq}, found {seq}", pseq + 1),
                        ));
                    } else if prev_hash != *phash {
                        problems.push(problem(
                            seq,
                            "fork",
                            format!("record {seq} does not link to record {pseq}"),
                        ));
                    }
                }
                match line.authenticate(&self.epoch, mac_key.as_deref(), sealed_from) {
                    Ok(true) => seen_mac = true,
                    Ok(false) if seen_mac => unauthenticated += 1,
                    Ok(false) => {}
                    Err(e) => problems.push(problem(seq, "tampered", e.to_string())),
                }
                if sealed_from == 0 && line.is_sealed() {
                    sealed_from = seq;
                }
                match line.record(&self.epoch, key) {
                    Ok(r) if r.intact() => {}
                    Ok(_) => problems.push(problem(
                        seq,
                        "tampered",
                        format!("record {seq} does not match its hash"),
                    )),
                    Err(e) => problems.push(problem(seq, "tampered", format!("record {seq}: {e}"))),
                }
                prev = Some((seq, hash));
            }
        }
        Ok(SpoolVerdict {
            records: count,
            problems,
            unauthenticated,
            head: prev.map_or(0, |p| p.0),
        })
    }
}

/// What [`Spool::verify`] found.
#[derive(Clone, Debug)]
pub struct SpoolVerdict {
    /// Records in the spool.
    pub records: u64,
    /// Gaps, forks, tampered records.
    pub problems: Vec<ChainProblem>,
    /// Records after the first MAC'd one without a MAC (written while sealed).
    pub unauthenticated: u64,
    /// Last sequence number found in the files.
    pub head: u64,
}

#[cfg(test)]
mod tests;

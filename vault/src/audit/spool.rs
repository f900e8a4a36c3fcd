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
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::record::{chain, AuditEvent, AuditRecord, ChainProblem, GENESIS};
use super::sealing::{BatchSealer, SpoolKey};

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

/// One spool line: the chain fields in clear (so a sealed node can continue the chain), the
/// body sealed to the audit spool key — or, before the vault is initialized and no key exists
/// yet, in clear.
#[derive(Serialize, Deserialize)]
struct SpoolLine {
    node: u64,
    seq: u64,
    prev_hash: String,
    hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<AuditEvent>,
    /// HMAC-SHA256 over (node, epoch, seq, hash), hex, when the node was unsealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

const MAC_LABEL: &[u8] = b"coffer audit spool mac v1";

/// The MAC of record `seq` of `node`'s epoch `epoch` with hash `hash`.
pub fn line_mac(key: &[u8; 32], node: u64, epoch: &str, seq: u64, hash: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(MAC_LABEL);
    mac.update(&node.to_be_bytes());
    mac.update(&(epoch.len() as u64).to_be_bytes());
    mac.update(epoch.as_bytes());
    mac.update(&seq.to_be_bytes());
    mac.update(hash.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

impl SpoolLine {
    fn of(rec: &AuditRecord, sealer: Option<&BatchSealer>, mac_key: Option<&[u8; 32]>) -> Self {
        let (sealed, event) = match sealer {
            Some(s) => {
                let body =
                    zeroize::Zeroizing::new(serde_json::to_vec(&rec.event).unwrap_or_default());
                (Some(s.seal(rec.node, rec.seq, &body)), None)
            }
            None => (None, Some(rec.event.clone())),
        };
        Self {
            node: rec.node,
            seq: rec.seq,
            prev_hash: rec.prev_hash.clone(),
            hash: rec.hash.clone(),
            sealed,
            event,
            mac: mac_key.map(|k| line_mac(k, rec.node, &rec.epoch, rec.seq, &rec.hash)),
        }
    }

    /// Whether the body is sealed: after the first such line, every body must be.
    fn is_sealed(&self) -> bool {
        self.sealed.is_some()
    }

    /// Checks what can be checked without opening the body: a clear body where none may be,
    /// and the MAC when the key is at hand. `Ok(false)` when the line has no MAC (written
    /// while the node was sealed, or before the cluster had a keyring).
    fn authenticate(
        &self,
        epoch: &str,
        mac_key: Option<&[u8; 32]>,
        sealed_from: u64,
    ) -> Result<bool, SpoolError> {
        let tampered = |why: String| SpoolError::Tampered { seq: self.seq, why };
        if self.event.is_some() && sealed_from > 0 && self.seq > sealed_from {
            return Err(tampered(format!(
                "record {} has a clear body after the spool's bodies were sealed",
                self.seq
            )));
        }
        match (&self.mac, mac_key) {
            (Some(mac), Some(key)) => {
                if *mac == line_mac(key, self.node, epoch, self.seq, &self.hash) {
                    Ok(true)
                } else {
                    Err(tampered(format!("record {} fails its MAC", self.seq)))
                }
            }
            (Some(_), None) => Ok(true),
            (None, _) => Ok(false),
        }
    }

    /// The record, opening a sealed body with `key`.
    fn record(self, epoch: &str, key: Option<&SpoolKey>) -> Result<AuditRecord, SpoolError> {
        let seq = self.seq;
        let tampered = |why: String| SpoolError::Tampered { seq, why };
        let event = match (self.event, self.sealed) {
            (Some(e), _) => e,
            (None, Some(sealed)) => {
                let key = key.ok_or(SpoolError::Sealed)?;
                let body = key.open(self.node, self.seq, &sealed).map_err(tampered)?;
                serde_json::from_slice(&body)
                    .map_err(|e| tampered(format!("sealed audit body: {e}")))?
            }
            (None, None) => return Err(tampered("spool line has no body".into())),
        };
        Ok(AuditRecord {
            node: self.node,
            epoch: epoch.to_string(),
            seq: self.seq,
            event,
            prev_hash: self.prev_hash,
            hash: self.hash,
            mac: self.mac,
        })
    }
}

/// The spool's epoch id: read from `dir/epoch`, or made (and made durable) for a new spool.
fn load_epoch(dir: &Path) -> Result<String, String> {
    let path = dir.join("epoch");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    }
    let mut id = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
    let epoch = hex::encode(id);
    let tmp = dir.join("epoch.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(epoch.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(epoch)
}

/// The first sealed line's sequence number in the first segment (0 if none): clear bodies
/// exist only at the very start of a spool (before the cluster had its spool key).
fn first_sealed(segments: &BTreeMap<u64, PathBuf>) -> u64 {
    let Some((_, path)) = segments.iter().next() else {
        return 0;
    };
    let Ok(file) = File::open(path) else {
        return 0;
    };
    BufReader::new(file)
        .split(b'\n')
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_slice::<SpoolLine>(&l).ok())
        .find(SpoolLine::is_sealed)
        .map_or(0, |l| l.seq)
}

fn segment_name(first: u64) -> String {
    format!("spool-{first:020}.jsonl")
}

fn list_segments(dir: &Path) -> Result<BTreeMap<u64, PathBuf>, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)
        .map_err(|e| format!("listing {}: {e}", dir.display()))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(first) = name
            .strip_prefix("spool-")
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.insert(first, entry.path());
        }
    }
    Ok(out)
}

/// Reads the last segment, truncating a torn (newline-less) tail; returns the last record's
/// sequence number and hash.
fn recover_tail(path: &Path) -> Result<Option<(u64, String)>, String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        tracing::warn!(
            path = %path.display(),
            bytes = bytes.len() - complete,
            "truncating a torn, never-acknowledged audit spool tail"
        );
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| e.to_string())?;
        f.set_len(complete as u64).map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| e.to_string())?;
    }
    let last = bytes[..complete]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice::<SpoolLine>(l).ok())
        .next_back()
        .map(|l| (l.seq, l.hash));
    Ok(last)
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

    /// Resolves when new records may be durable.
    pub async fn changed(&self) {
        self.shared.notify.notified().await
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
            let mut file =
                File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
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

/// Parses, authenticates and opens every line of a segment's bytes, as reading and verifying
/// do; returns how many lines were whole records. For the fuzz target: no input panics.
pub fn check_segment(bytes: &[u8], epoch: &str, key: &SpoolKey, mac_key: &[u8; 32]) -> usize {
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut sealed_from = 0;
    let mut whole = 0;
    for raw in bytes[..complete].split(|b| *b == b'\n') {
        let Ok(line) = serde_json::from_slice::<SpoolLine>(raw) else {
            continue;
        };
        if sealed_from == 0 && line.is_sealed() {
            sealed_from = line.seq;
        }
        let _ = line.authenticate(epoch, Some(mac_key), sealed_from);
        if let Ok(record) = line.record(epoch, Some(key)) {
            let _ = record.intact();
            whole += 1;
        }
    }
    whole
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

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    node: u64,
    epoch: String,
    last_seq: u64,
    last_hash: String,
    /// Current segment file and its first seq.
    file: Option<(File, u64)>,
    shared: Arc<Shared>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<(AuditEvent, Reply)>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            group.extend(rx.try_iter().take(MAX_GROUP - 1));
            self.commit(group);
        }
    }

    fn commit(&mut self, group: Vec<(AuditEvent, Reply)>) {
        let failed = self.shared.failure.lock().ok().and_then(|f| f.clone());
        if let Some(why) = failed {
            for (_, reply) in group {
                let _ = reply.send(Err(SpoolError::Unavailable(why.clone())));
            }
            return;
        }
        let (seq0, hash0) = (self.last_seq, self.last_hash.clone());
        let mut records = Vec::with_capacity(group.len());
        for (event, _) in &group {
            let rec = chain(
                self.node,
                &self.epoch,
                self.last_seq + 1,
                &self.last_hash,
                event.clone(),
            );
            self.last_seq = rec.seq;
            self.last_hash = rec.hash.clone();
            records.push(rec);
        }
        match self.write(&records) {
            Ok(()) => {
                if let Ok(mut head) = self.shared.head.lock() {
                    *head = (self.last_seq, self.last_hash.clone());
                }
                self.shared.durable.store(self.last_seq, Ordering::Release);
                self.shared
                    .stats
                    .appends
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                for ((_, reply), rec) in group.into_iter().zip(records) {
                    let _ = reply.send(Ok(rec));
                }
                self.shared.notify.notify_waiters();
            }
            Err(why) => {
                let err = SpoolError::Unavailable(why);
                tracing::error!("{err}; refusing requests until restart (fail closed)");
                (self.last_seq, self.last_hash) = (seq0, hash0);
                if let Ok(mut f) = self.shared.failure.lock() {
                    *f = Some(match &err {
                        SpoolError::Unavailable(why) => why.clone(),
                        other => other.to_string(),
                    });
                }
                for (_, reply) in group {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// Writes records (rolling segments as needed) and syncs once per touched file.
    fn write(&mut self, records: &[AuditRecord]) -> Result<(), String> {
        let recipient = *self.shared.recipient.lock().map_err(|e| e.to_string())?;
        let sealer = recipient.map(|r| BatchSealer::new(&r));
        let mac_key = self
            .shared
            .mac_key
            .lock()
            .map_err(|e| e.to_string())?
            .clone();
        if sealer.is_some() && self.shared.sealed_from.load(Ordering::Acquire) == 0 {
            if let Some(first) = records.first() {
                self.shared.sealed_from.store(first.seq, Ordering::Release);
            }
        }
        let mut buf = Vec::new();
        for rec in records {
            let needs_new = match &self.file {
                None => true,
                Some((_, first)) => rec.seq >= first + SEGMENT_RECORDS,
            };
            if needs_new {
                self.flush(&mut buf)?;
                self.roll(rec.seq)?;
            }
            let line = SpoolLine::of(rec, sealer.as_ref(), mac_key.as_deref());
            serde_json::to_writer(&mut buf, &line).map_err(|e| e.to_string())?;
            buf.push(b'\n');
        }
        self.flush(&mut buf)
    }

    fn flush(&mut self, buf: &mut Vec<u8>) -> Result<(), String> {
        if buf.is_empty() {
            return Ok(());
        }
        let (file, _) = self.file.as_mut().ok_or("no open spool segment")?;
        file.write_all(buf).map_err(|e| format!("write: {e}"))?;
        let t = Instant::now();
        file.sync_data().map_err(|e| format!("fsync: {e}"))?;
        let stats = &self.shared.stats;
        stats
            .fsync_nanos
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        buf.clear();
        Ok(())
    }

    /// Opens the segment for `seq`: the existing last one if it still has room, else a new
    /// one whose creation is made durable (directory fsync).
    fn roll(&mut self, seq: u64) -> Result<(), String> {
        let mut segments = self.shared.segments.lock().map_err(|e| e.to_string())?;
        if self.file.is_none() {
            if let Some((first, path)) = segments.iter().next_back() {
                if seq < first + SEGMENT_RECORDS {
                    let f = OpenOptions::new()
                        .append(true)
                        .open(path)
                        .map_err(|e| e.to_string())?;
                    self.file = Some((f, *first));
                    return Ok(());
                }
            }
        }
        let path = self.dir.join(segment_name(seq));
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("syncing {}: {e}", self.dir.display()))?;
        segments.insert(seq, path);
        self.file = Some((f, seq));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: usize) -> AuditEvent {
        AuditEvent {
            path: format!("secret/data/{i}"),
            operation: "read".into(),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_appends_share_fsyncs_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path(), 3).unwrap());
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let s = spool.clone();
                tokio::spawn(async move { s.append(ev(i)).await.unwrap() })
            })
            .collect();
        let mut seqs: Vec<u64> = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap().seq);
        }
        seqs.sort();
        assert_eq!(seqs, (1..=64).collect::<Vec<_>>());
        assert!(spool.stats().fsyncs.load(Ordering::Relaxed) <= 64);
        let read = spool.read_from(1, 1000, None).unwrap();
        assert_eq!(read.len(), 64);
        assert!(super::super::record::verify_chain(3, (0, GENESIS), &read).is_empty());
        assert!(read.iter().all(|r| r.epoch == spool.epoch()));
        let epoch = spool.epoch().to_string();
        drop(spool);

        let reopened = Spool::open(dir.path(), 3).unwrap();
        assert_eq!(reopened.last_seq(), 64);
        assert_eq!(reopened.epoch(), epoch, "the epoch survives a restart");
        let next = reopened.append(ev(99)).await.unwrap();
        assert_eq!(
            (next.seq, next.prev_hash.as_str()),
            (65, read[63].hash.as_str())
        );
    }

    #[tokio::test]
    async fn bodies_are_sealed_once_a_recipient_is_set() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 2).unwrap();
        spool.append(ev(1)).await.unwrap();
        let key = SpoolKey::generate();
        spool.set_recipient(key.public());
        spool.append(ev(2)).await.unwrap();
        let text = std::fs::read_to_string(dir.path().join(segment_name(1))).unwrap();
        assert!(
            text.contains("secret/data/1"),
            "before a key exists bodies are clear"
        );
        assert!(
            !text.contains("secret/data/2"),
            "afterwards they are sealed"
        );
        assert!(
            spool.read_from(1, 10, None).is_err(),
            "a sealed node cannot read sealed bodies"
        );
        let read = spool.read_from(1, 10, Some(&key)).unwrap();
        assert_eq!(read[1].event.path, "secret/data/2");
        let v = spool.verify(Some(&key)).unwrap();
        assert_eq!((v.records, v.problems.len()), (2, 0), "{:?}", v.problems);
        drop(spool);
        let reopened = Spool::open(dir.path(), 2).unwrap();
        reopened.set_recipient(key.public());
        let next = reopened.append(ev(3)).await.unwrap();
        assert_eq!(
            (next.seq, next.prev_hash.as_str()),
            (3, read[1].hash.as_str())
        );
    }

    #[tokio::test]
    async fn a_torn_tail_is_truncated_and_the_chain_continues() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1).unwrap();
        for i in 0..3 {
            spool.append(ev(i)).await.unwrap();
        }
        drop(spool);
        let seg = dir.path().join(segment_name(1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(br#"{"node":1,"seq":4,"ti"#).unwrap();
        drop(f);
        let spool = Spool::open(dir.path(), 1).unwrap();
        assert_eq!(spool.last_seq(), 3);
        assert_eq!(spool.append(ev(4)).await.unwrap().seq, 4);
        let v = spool.verify(None).unwrap();
        assert_eq!((v.records, v.problems.len()), (4, 0));
    }

    #[tokio::test]
    async fn reads_resume_and_segments_roll_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1).unwrap();
        let n = SEGMENT_RECORDS as usize + 10;
        for i in 0..n {
            spool.append(ev(i)).await.unwrap();
        }
        assert_eq!(list_segments(dir.path()).unwrap().len(), 2);
        let mut next = 1;
        while next <= n as u64 {
            let batch = spool.read_from(next, 256, None).unwrap();
            assert_eq!(batch[0].seq, next);
            next = batch.last().unwrap().seq + 1;
        }
        spool.prune_through(SEGMENT_RECORDS).unwrap();
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
        assert_eq!(
            spool.read_from(SEGMENT_RECORDS + 1, 5, None).unwrap()[0].seq,
            SEGMENT_RECORDS + 1
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_failed_write_fails_closed_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1).unwrap();
        // The first segment is created on the first append; make it a disk that is full.
        std::os::unix::fs::symlink("/dev/full", dir.path().join(segment_name(1))).unwrap();
        let err = spool.append(ev(1)).await.unwrap_err().to_string();
        assert!(err.starts_with("audit spool unavailable: write:"), "{err}");
        assert_eq!(spool.failure().as_deref(), Some(err.as_str()));
        assert_eq!(
            spool.append(ev(2)).await.unwrap_err().to_string(),
            err,
            "refuses until restart"
        );
        assert_eq!(spool.last_seq(), 0, "nothing was acknowledged");
    }

    /// Rewrites line `seq` of the first segment with `edit` applied to its parsed form.
    fn rewrite(dir: &Path, seq: u64, edit: impl Fn(&mut SpoolLine)) {
        let seg = dir.join(segment_name(1));
        let text = std::fs::read_to_string(&seg).unwrap();
        let lines: Vec<String> = text
            .lines()
            .map(|l| {
                let mut line: SpoolLine = serde_json::from_str(l).unwrap();
                if line.seq == seq {
                    edit(&mut line);
                }
                serde_json::to_string(&line).unwrap()
            })
            .collect();
        std::fs::write(&seg, lines.join("\n") + "\n").unwrap();
    }

    #[tokio::test]
    async fn without_the_mac_key_nobody_rewrites_a_record_undetected() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1).unwrap();
        let key = SpoolKey::generate();
        spool.set_recipient(key.public());
        spool.set_mac_key(Some(Zeroizing::new([7u8; 32])));
        for i in 0..4 {
            spool.append(ev(i)).await.unwrap();
        }
        let epoch = spool.epoch().to_string();
        // Someone with disk access (the spool's public key is public) forges record 2: a
        // new body, sealed to the public key, with a hash that fits the chain.
        rewrite(dir.path(), 2, |line| {
            let mut forged = ev(999);
            forged.path = "secret/data/innocent".into();
            let rec = chain(1, &epoch, 2, &line.prev_hash, forged);
            let sealer = BatchSealer::new(&key.public());
            *line = SpoolLine::of(&rec, Some(&sealer), None);
            line.mac = Some("00".repeat(32));
        });
        let err = spool.read_from(1, 10, Some(&key)).unwrap_err().to_string();
        assert!(err.contains("record 2 fails its MAC"), "{err}");
        let v = spool.verify(Some(&key)).unwrap();
        assert!(
            v.problems
                .iter()
                .any(|p| p.seq == 2 && p.kind == "tampered" && p.detail.contains("MAC")),
            "{:?}",
            v.problems
        );
        // A sealed body turned clear is refused even where no MAC can be checked.
        spool.set_mac_key(None);
        rewrite(dir.path(), 3, |line| {
            line.sealed = None;
            line.mac = None;
            line.event = Some(ev(3));
        });
        let err = spool.read_from(3, 10, Some(&key)).unwrap_err().to_string();
        assert!(err.contains("clear body after"), "{err}");
    }

    #[tokio::test]
    async fn records_written_while_sealed_are_reported_unauthenticated() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1).unwrap();
        let key = SpoolKey::generate();
        spool.set_recipient(key.public());
        spool.set_mac_key(Some(Zeroizing::new([7u8; 32])));
        spool.append(ev(1)).await.unwrap();
        spool.set_mac_key(None);
        spool.append(ev(2)).await.unwrap();
        spool.set_mac_key(Some(Zeroizing::new([7u8; 32])));
        let v = spool.verify(Some(&key)).unwrap();
        assert_eq!((v.records, v.unauthenticated, v.problems.len()), (2, 1, 0));
        assert_eq!(spool.head().0, 2);
    }

    #[tokio::test]
    async fn a_flipped_byte_is_reported_with_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1).unwrap();
        for i in 0..5 {
            spool.append(ev(i)).await.unwrap();
        }
        let seg = dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&seg).unwrap();
        let third = bytes
            .split(|b| *b == b'\n')
            .take(2)
            .map(|l| l.len() + 1)
            .sum::<usize>();
        let pos = third
            + bytes[third..]
                .windows(11)
                .position(|w| w == b"secret/data")
                .unwrap();
        bytes[pos] ^= 0x20;
        std::fs::write(&seg, bytes).unwrap();
        let problems = spool.verify(None).unwrap().problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            (problems[0].seq, problems[0].kind.as_str()),
            (3, "tampered")
        );
    }
}

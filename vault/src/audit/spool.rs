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

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::record::{chain, AuditEvent, AuditRecord, ChainProblem, GENESIS};
use super::sealing::{BatchSealer, SpoolKey};

/// Records per segment file; segments wholly merged into the cluster log are deleted.
const SEGMENT_RECORDS: u64 = 10_000;
/// Most appends one group commit takes.
const MAX_GROUP: usize = 4096;

type Reply = tokio::sync::oneshot::Sender<Result<AuditRecord, String>>;

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
}

/// The spool handle.
pub struct Spool {
    /// Origin node id written into every record.
    node: u64,
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
}

impl SpoolLine {
    fn of(rec: &AuditRecord, sealer: Option<&BatchSealer>) -> Self {
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
        }
    }

    /// The record, opening a sealed body with `key`.
    fn record(self, key: Option<&SpoolKey>) -> Result<AuditRecord, String> {
        let event = match (self.event, self.sealed) {
            (Some(e), _) => e,
            (None, Some(sealed)) => {
                let key = key.ok_or("the audit spool key is needed (the vault is sealed)")?;
                let body = key.open(self.node, self.seq, &sealed)?;
                serde_json::from_slice(&body).map_err(|e| format!("sealed audit body: {e}"))?
            }
            (None, None) => return Err("spool line has no body".into()),
        };
        Ok(AuditRecord {
            node: self.node,
            seq: self.seq,
            event,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
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
    pub fn open(dir: &Path, node: u64) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let segments = list_segments(dir)?;
        let last = match segments.iter().next_back() {
            Some((_, path)) => recover_tail(path)?,
            None => None,
        };
        let (last_seq, last_hash) = last.unwrap_or((0, GENESIS.to_string()));
        let shared = Arc::new(Shared {
            durable: AtomicU64::new(last_seq),
            failure: Mutex::new(None),
            segments: Mutex::new(segments),
            notify: tokio::sync::Notify::new(),
            stats: SpoolStats::default(),
            read_pos: Mutex::new(None),
            recipient: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            dir: dir.to_path_buf(),
            node,
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
            tx: Mutex::new(tx),
            shared,
        })
    }

    /// Appends an event; resolves once its record is durable.
    pub async fn append(&self, event: AuditEvent) -> Result<AuditRecord, String> {
        if let Some(why) = self.failure() {
            return Err(why);
        }
        let started = Instant::now();
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .lock()
            .map_err(|_| "audit spool lock poisoned".to_string())?
            .send((event, reply))
            .map_err(|_| "audit spool writer has stopped".to_string())?;
        let result = rx
            .await
            .map_err(|_| "audit spool writer has stopped".to_string())?;
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

    /// Why the spool refuses appends, if it does.
    pub fn failure(&self) -> Option<String> {
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
    ) -> Result<Vec<AuditRecord>, String> {
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
                None => return Err(format!("audit record {seq} is no longer in the spool")),
            },
        };
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
                let rec: SpoolLine = serde_json::from_slice(&line).map_err(|e| {
                    format!("unreadable audit spool line in {}: {e}", path.display())
                })?;
                if rec.seq > durable {
                    break;
                }
                offset += n as u64;
                if rec.seq >= seq {
                    out.push(rec.record(key)?);
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
    pub fn prune_through(&self, seq: u64) -> Result<(), String> {
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
    /// fields, and each body against its hash (opening sealed bodies with `key`).
    pub fn verify(&self, key: Option<&SpoolKey>) -> Result<(u64, Vec<ChainProblem>), String> {
        let segments = self
            .shared
            .segments
            .lock()
            .map_err(|e| e.to_string())?
            .clone();
        let mut problems = Vec::new();
        let mut count = 0;
        let mut prev: Option<(u64, String)> = None;
        let problem = |seq, kind: &str, detail: String| ChainProblem {
            node: self.node,
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
                match line.record(key) {
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
        Ok((count, problems))
    }
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    node: u64,
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
                let _ = reply.send(Err(why.clone()));
            }
            return;
        }
        let (seq0, hash0) = (self.last_seq, self.last_hash.clone());
        let mut records = Vec::with_capacity(group.len());
        for (event, _) in &group {
            let rec = chain(self.node, self.last_seq + 1, &self.last_hash, event.clone());
            self.last_seq = rec.seq;
            self.last_hash = rec.hash.clone();
            records.push(rec);
        }
        match self.write(&records) {
            Ok(()) => {
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
                let why = format!("audit spool unavailable: {why}");
                tracing::error!("{why}; refusing requests until restart (fail closed)");
                (self.last_seq, self.last_hash) = (seq0, hash0);
                if let Ok(mut f) = self.shared.failure.lock() {
                    *f = Some(why.clone());
                }
                for (_, reply) in group {
                    let _ = reply.send(Err(why.clone()));
                }
            }
        }
    }

    /// Writes records (rolling segments as needed) and syncs once per touched file.
    fn write(&mut self, records: &[AuditRecord]) -> Result<(), String> {
        let recipient = *self.shared.recipient.lock().map_err(|e| e.to_string())?;
        let sealer = recipient.map(|r| BatchSealer::new(&r));
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
            serde_json::to_writer(&mut buf, &SpoolLine::of(rec, sealer.as_ref()))
                .map_err(|e| e.to_string())?;
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
        drop(spool);

        let reopened = Spool::open(dir.path(), 3).unwrap();
        assert_eq!(reopened.last_seq(), 64);
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
        let (count, problems) = spool.verify(Some(&key)).unwrap();
        assert_eq!((count, problems.len()), (2, 0), "{problems:?}");
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
        let (count, problems) = spool.verify(None).unwrap();
        assert_eq!((count, problems.len()), (4, 0));
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
        let err = spool.append(ev(1)).await.unwrap_err();
        assert!(err.starts_with("audit spool unavailable: write:"), "{err}");
        assert_eq!(spool.failure().as_deref(), Some(err.as_str()));
        assert_eq!(
            spool.append(ev(2)).await.unwrap_err(),
            err,
            "refuses until restart"
        );
        assert_eq!(spool.last_seq(), 0, "nothing was acknowledged");
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
        let (_, problems) = spool.verify(None).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            (problems[0].seq, problems[0].kind.as_str()),
            (3, "tampered")
        );
    }
}

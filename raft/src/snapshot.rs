//! Snapshot files: building one from a consistent RocksDB snapshot, verifying and installing
//! one received from the leader, both in bounded chunks.
//!
//! Format: `MAGIC | u32 header_len | header (postcard) | records | u64 record_count |
//! sha256(all before)`, where a record is `u32 key_len | key | u32 value_len | value` and the
//! value is the state machine's stored encoding. The count trails the records so that one pass
//! over the state machine both writes and counts them. Memory stays bounded by [`BATCH_BYTES`] whatever the store's size.
//!
//! Durability: a snapshot is written to a temporary file, fsynced, renamed to `current.snap`
//! and the directory fsynced before anyone is told about it. Installing marks the state
//! machine "installing" (synced) before clearing it; a node that crashes mid-install finishes
//! the install from `current.snap` when it reopens.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{Snapshot, SnapshotMeta};
use rocksdb::{IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::db::{
    cf, decode_entry, Db, CF_KV, CF_SM, KEY_APPLIED, KEY_INSTALLING, KEY_MEMBERSHIP, KEY_REVISION,
};
use crate::txn::KvEntry;
use crate::types::{LogId, NodeAddr, NodeId, StoredMembership, TypeConfig};

const MAGIC: &[u8; 8] = b"CFSNAP02";
const CURRENT: &str = "current.snap";
/// Upper bound of one RocksDB write batch while installing.
const BATCH_BYTES: usize = 4 << 20;
/// Sanity bounds on a record, so a corrupt length cannot make us allocate gigabytes.
const MAX_KEY: usize = 64 << 10;
const MAX_VALUE: usize = 64 << 20;
const MAX_HEADER: usize = 16 << 20;

/// What a snapshot file says about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// openraft snapshot id (unique per build).
    pub snapshot_id: String,
    /// Last log id applied in the state the snapshot holds.
    pub last_applied: Option<LogId>,
    /// Membership as of that log id.
    pub membership: StoredMembership,
    /// Global revision of the state machine.
    pub revision: u64,
    /// Number of key-value records (stored in the trailer; filled in when the file is verified).
    #[serde(skip)]
    pub entries: u64,
}

impl SnapshotHeader {
    fn meta(&self) -> SnapshotMeta<NodeId, NodeAddr> {
        SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.snapshot_id.clone(),
        }
    }
}

/// The snapshot directory of a node, with the database the snapshots are of.
#[derive(Clone)]
pub struct SnapshotFiles {
    /// `<data_dir>/snapshots`.
    dir: PathBuf,
    /// The node's database.
    db: Arc<Db>,
    /// Keeps builds from seeing a state that is being replaced.
    gate: Arc<crate::replace::StateGate>,
}

fn io<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

impl SnapshotFiles {
    /// Uses (creating) `dir`, removing leftovers of interrupted builds and receptions.
    pub fn new(dir: PathBuf, db: Arc<Db>) -> Result<Self, String> {
        std::fs::create_dir_all(&dir).map_err(io("creating snapshot dir"))?;
        for entry in std::fs::read_dir(&dir)
            .map_err(io("listing snapshot dir"))?
            .flatten()
        {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".part") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            dir,
            db,
            gate: Arc::default(),
        })
    }

    /// The gate between snapshot builds and wholesale changes of the state.
    pub fn gate(&self) -> Arc<crate::replace::StateGate> {
        self.gate.clone()
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    fn part_path(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{what}-{}.part", unix_nanos()))
    }

    /// Writes a snapshot of the state machine as of now and makes it current. Blocking.
    pub fn build(&self) -> Result<SnapshotHeader, String> {
        let db = &self.db;
        let snap = self.gate.stable(|| db.snapshot());
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&snap);
        let meta = |key| -> Result<Option<Vec<u8>>, String> {
            snap.get_cf(cf(db, CF_SM), key)
                .map_err(io("reading state-machine meta"))
        };
        let last_applied: Option<LogId> = decode::<Option<LogId>>(meta(KEY_APPLIED)?)?.flatten();
        let membership: StoredMembership = decode(meta(KEY_MEMBERSHIP)?)?.unwrap_or_default();
        let revision: u64 = decode(meta(KEY_REVISION)?)?.unwrap_or(0);
        let snapshot_id = format!(
            "{}-{}-{}",
            last_applied.map_or(0, |l| l.leader_id.term),
            last_applied.map_or(0, |l| l.index),
            unix_nanos()
        );

        let tmp = self.part_path("build");
        let result = (|| {
            let file = File::create(&tmp).map_err(io("creating snapshot"))?;
            let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
            let mut header = SnapshotHeader {
                snapshot_id: snapshot_id.clone(),
                last_applied,
                membership: membership.clone(),
                revision,
                entries: 0,
            };
            let header_bytes = postcard::to_allocvec(&header).map_err(io("encoding header"))?;
            out.write_all(MAGIC).map_err(io("writing snapshot"))?;
            write_chunk(&mut out, &header_bytes)?;
            for item in db.iterator_cf_opt(cf(db, CF_KV), read_opts(&snap), IteratorMode::Start) {
                let (key, value) = item.map_err(io("reading state machine"))?;
                write_chunk(&mut out, &key)?;
                write_chunk(&mut out, &value)?;
                header.entries += 1;
            }
            out.write_all(&header.entries.to_be_bytes())
                .map_err(io("writing snapshot"))?;
            let digest = out.finish();
            let mut inner = out.into_inner();
            inner.write_all(&digest).map_err(io("writing snapshot"))?;
            let file = inner.into_inner().map_err(io("flushing snapshot"))?;
            file.sync_all().map_err(io("syncing snapshot"))?;
            Ok::<_, String>(header)
        })();
        match result {
            Ok(header) => {
                self.publish(&tmp)?;
                Ok(header)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Atomically makes `path` the current snapshot (rename + directory fsync).
    fn publish(&self, path: &Path) -> Result<(), String> {
        std::fs::rename(path, self.current_path()).map_err(io("publishing snapshot"))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing snapshot dir"))
    }

    /// The current snapshot, if any, opened for reading from its first byte.
    pub async fn current(&self) -> Result<Option<Snapshot<TypeConfig>>, String> {
        let path = self.current_path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("opening snapshot: {e}")),
        };
        let (header, mut file) = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(file);
            let header = read_header(&mut reader)?;
            let mut file = reader.into_inner();
            file.seek(SeekFrom::Start(0))
                .map_err(io("seeking snapshot"))?;
            Ok::<_, String>((header, file))
        })
        .await
        .map_err(io("reading snapshot"))??;
        file.seek(SeekFrom::Start(0))
            .map_err(io("seeking snapshot"))?;
        Ok(Some(Snapshot {
            meta: header.meta(),
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }

    /// A fresh file to receive a snapshot from the leader into.
    pub async fn incoming(&self) -> Result<tokio::fs::File, String> {
        let path = self.part_path("incoming");
        tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(io("creating incoming snapshot"))
    }

    /// Verifies a received snapshot against `meta`, makes it current, and replaces the state
    /// machine's contents with it. Blocking.
    pub fn install(
        &self,
        db: &DB,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        mut file: File,
    ) -> Result<SnapshotHeader, String> {
        file.sync_all().map_err(io("syncing received snapshot"))?;
        let header = verify(&mut file)?;
        if header.last_applied != meta.last_log_id {
            return Err(format!(
                "snapshot file is at {:?}, leader announced {:?}",
                header.last_applied, meta.last_log_id
            ));
        }
        let tmp = self.part_path("received");
        let mut out = File::create(&tmp).map_err(io("copying snapshot"))?;
        file.seek(SeekFrom::Start(0))
            .map_err(io("seeking snapshot"))?;
        std::io::copy(&mut file, &mut out).map_err(io("copying snapshot"))?;
        out.sync_all().map_err(io("syncing snapshot"))?;
        self.publish(&tmp)?;
        self.gate.changing(|| {
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            db.put_cf_opt(cf(db, CF_SM), KEY_INSTALLING, b"1", &opts)
                .map_err(io("marking install"))?;
            self.load_current_into(db)
        })
    }

    /// Installs a snapshot file handed over out of band (a bootstrap pack) into a node that
    /// holds no state yet. Blocking; `progress(done, total)` is called as records load.
    pub fn install_seed(
        &self,
        db: &DB,
        source: &mut dyn Read,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<SnapshotHeader, String> {
        let applied: Option<Option<LogId>> = decode(
            db.get_cf(cf(db, CF_SM), KEY_APPLIED)
                .map_err(io("reading state"))?,
        )?;
        if applied.flatten().is_some() {
            return Err("this data directory already holds a node's state".into());
        }
        let tmp = self.part_path("seed");
        let written = (|| {
            let mut out = File::create(&tmp).map_err(io("writing snapshot"))?;
            std::io::copy(source, &mut out).map_err(io("writing snapshot"))?;
            out.sync_all().map_err(io("syncing snapshot"))?;
            verify(&mut File::open(&tmp).map_err(io("reading snapshot"))?)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.publish(&tmp)?;
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        db.put_cf_opt(cf(db, CF_SM), KEY_INSTALLING, b"1", &opts)
            .map_err(io("marking install"))?;
        self.load_with_progress(db, progress)
    }

    /// Whether a crash interrupted an install.
    pub fn install_pending(&self, db: &DB) -> Result<bool, String> {
        Ok(db
            .get_cf(cf(db, CF_SM), KEY_INSTALLING)
            .map_err(io("reading install marker"))?
            .is_some())
    }

    /// Replaces the state machine's contents with `current.snap`, in bounded batches; the last
    /// batch (synced) sets the applied id, membership and revision and clears the marker.
    pub fn load_current_into(&self, db: &DB) -> Result<SnapshotHeader, String> {
        self.load_with_progress(db, &mut |_, _| {})
    }

    fn load_with_progress(
        &self,
        db: &DB,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<SnapshotHeader, String> {
        let mut file = File::open(self.current_path()).map_err(io("opening snapshot"))?;
        let header = verify(&mut file)?;
        let kv = cf(db, CF_KV);
        clear_cf(db, kv)?;
        file.seek(SeekFrom::Start(0))
            .map_err(io("seeking snapshot"))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let _ = read_header(&mut reader)?;
        let mut batch = WriteBatch::default();
        for done in 0..header.entries {
            let key = read_chunk(&mut reader, MAX_KEY)?;
            let value = read_chunk(&mut reader, MAX_VALUE)?;
            batch.put_cf(kv, key, value);
            if batch.size_in_bytes() >= BATCH_BYTES {
                db.write(std::mem::take(&mut batch))
                    .map_err(io("installing snapshot"))?;
                progress(done + 1, header.entries);
            }
        }
        progress(header.entries, header.entries);
        let sm = cf(db, CF_SM);
        batch.put_cf(sm, KEY_APPLIED, encode(&header.last_applied)?);
        batch.put_cf(sm, KEY_MEMBERSHIP, encode(&header.membership)?);
        batch.put_cf(sm, KEY_REVISION, encode(&header.revision)?);
        batch.delete_cf(sm, KEY_INSTALLING);
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        db.write_opt(batch, &opts)
            .map_err(io("finishing snapshot install"))?;
        Ok(header)
    }
}

fn decode<T: serde::de::DeserializeOwned>(raw: Option<Vec<u8>>) -> Result<Option<T>, String> {
    raw.map(|b| postcard::from_bytes(&b))
        .transpose()
        .map_err(io("decoding state-machine meta"))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(value).map_err(io("encoding state-machine meta"))
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn read_opts<'a>(snap: &'a rocksdb::Snapshot<'a>) -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_snapshot(snap);
    opts
}

fn clear_cf(db: &DB, kv: &rocksdb::ColumnFamily) -> Result<(), String> {
    let mut batch = WriteBatch::default();
    for item in db.iterator_cf(kv, IteratorMode::Start) {
        let (key, _) = item.map_err(io("clearing state machine"))?;
        batch.delete_cf(kv, key);
        if batch.size_in_bytes() >= BATCH_BYTES {
            db.write(std::mem::take(&mut batch))
                .map_err(io("clearing state machine"))?;
        }
    }
    db.write(batch).map_err(io("clearing state machine"))
}

/// Checks a whole snapshot file before anything is installed from it: magic, header,
/// every record's framing and bounds, the record count in the trailer, and the checksum,
/// in one pass; returns its header. Leaves the file positioned at its start.
fn verify(file: &mut File) -> Result<SnapshotHeader, String> {
    let header = inspect(&mut *file)?;
    file.seek(SeekFrom::Start(0))
        .map_err(io("seeking snapshot"))?;
    Ok(header)
}

/// Checks a whole snapshot (magic, header, every record's framing and bounds, the trailer's
/// record count, the checksum) from any seekable reader, in one pass; returns its header.
/// What installing, packs and restores rely on, and what the fuzz target drives. Memory
/// stays bounded by the record bounds.
pub fn inspect<R: Read + Seek>(reader: &mut R) -> Result<SnapshotHeader, String> {
    scan(reader, &mut |_, _| {})
}

/// [`inspect`], showing every record to `visit` (its key, and its stored entry) as it
/// passes. A record that is not a stored entry is corrupt. Nothing seen may be trusted until
/// this returns `Ok`: the checksum is checked at the end.
pub fn scan<R: Read + Seek>(
    reader: &mut R,
    visit: &mut dyn FnMut(&[u8], &KvEntry),
) -> Result<SnapshotHeader, String> {
    let len = reader
        .seek(SeekFrom::End(0))
        .map_err(io("reading snapshot"))?;
    let trailer_at = len
        .checked_sub(8 + 32)
        .filter(|at| *at >= (MAGIC.len() + 4) as u64)
        .ok_or("snapshot file is truncated")?;
    reader
        .seek(SeekFrom::Start(0))
        .map_err(io("seeking snapshot"))?;
    let mut hashed = HashingReader {
        inner: BufReader::with_capacity(1 << 16, &mut *reader),
        hasher: Sha256::new(),
        read: 0,
    };
    let mut header = read_header(&mut hashed)?;
    let mut records = 0u64;
    while hashed.read < trailer_at {
        let key = read_chunk(&mut hashed, MAX_KEY)?;
        let value = read_chunk(&mut hashed, MAX_VALUE)?;
        let entry = decode_entry(&value)
            .ok_or("a snapshot record is not a stored entry: the file is corrupt")?;
        visit(&key, &entry);
        records += 1;
    }
    if hashed.read != trailer_at {
        return Err("snapshot records overrun the trailer: the file is corrupt".into());
    }
    let mut count = [0u8; 8];
    hashed
        .read_exact(&mut count)
        .map_err(io("reading snapshot"))?;
    let digest = hashed.hasher.finalize();
    let mut trailer = [0u8; 32];
    hashed
        .inner
        .read_exact(&mut trailer)
        .map_err(io("reading snapshot"))?;
    if digest.as_slice() != trailer {
        return Err("snapshot checksum mismatch: the file is corrupt or truncated".into());
    }
    if u64::from_be_bytes(count) != records {
        return Err(format!(
            "snapshot trailer counts {} records, the file holds {records}",
            u64::from_be_bytes(count)
        ));
    }
    header.entries = records;
    Ok(header)
}

/// A reader that hashes and counts what passes through it.
struct HashingReader<R: Read> {
    inner: R,
    hasher: Sha256,
    read: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

fn read_header(reader: &mut impl Read) -> Result<SnapshotHeader, String> {
    let mut magic = [0u8; 8];
    reader
        .read_exact(&mut magic)
        .map_err(io("reading snapshot"))?;
    if &magic != MAGIC {
        return Err("not a Coffer snapshot (bad magic)".into());
    }
    let bytes = read_chunk(reader, MAX_HEADER)?;
    postcard::from_bytes(&bytes).map_err(io("decoding snapshot header"))
}

fn write_chunk(out: &mut impl Write, bytes: &[u8]) -> Result<(), String> {
    let len = u32::try_from(bytes.len()).map_err(io("record too large"))?;
    out.write_all(&len.to_be_bytes())
        .map_err(io("writing snapshot"))?;
    out.write_all(bytes).map_err(io("writing snapshot"))
}

fn read_chunk(reader: &mut impl Read, max: usize) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    reader
        .read_exact(&mut len)
        .map_err(io("reading snapshot"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(format!(
            "snapshot record of {len} bytes exceeds the {max}-byte bound"
        ));
    }
    let mut buf = vec![0u8; len];
    reader
        .read_exact(&mut buf)
        .map_err(io("reading snapshot"))?;
    Ok(buf)
}

/// A writer that hashes everything written through it.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    fn finish(&mut self) -> [u8; 32] {
        std::mem::take(&mut self.hasher).finalize().into()
    }

    fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

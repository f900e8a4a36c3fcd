//! The backup file: a manifest anyone can read, the engine's snapshot, a checksum anyone can
//! check, and a MAC only the cluster's keys can make.
//!
//! File: `COFFERBAK1\n` | manifest length (u32 BE) | manifest (JSON) | snapshot (the engine's
//! snapshot file, `snapshot.bytes` long) | SHA-256 of everything before (32) | HMAC-SHA256 of
//! that digest under a key derived from the keyring (32).
//!
//! The manifest says what the file holds (cluster, node, applied index and term, time,
//! counts by kind, the seal configuration with its share fingerprints) and is checked against
//! the snapshot it describes when the file is opened. Values inside stay the envelopes they
//! are at rest. The checksum detects damage without any key (`snapshot inspect`); the MAC
//! detects a change made by someone who recomputed the checksum, once the keys are at hand
//! (a live restore checks it at once; an offline restore at the first unseal).

use std::io::{Read, Seek, SeekFrom};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::Key;
use crate::keys::{self, StoredKind};
use crate::rules::seal::SealConfig;

/// The file's first bytes.
pub const MAGIC: &[u8; 11] = b"COFFERBAK1\n";
/// The manifest format this version writes and the newest it reads.
pub const FORMAT: u32 = 1;
/// The keyring purpose the MAC key is derived for.
pub const MAC_PURPOSE: &[u8] = b"coffer backup mac v1";
/// Largest manifest accepted (a real one is about 2 KiB: a corrupt length must not make a
/// reader allocate gigabytes).
const MAX_MANIFEST_BYTES: u32 = 1 << 20;
/// Checksum and MAC.
const TRAILER_BYTES: u64 = 64;

/// What a backup says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// The cluster the backup is of.
    pub cluster_id: String,
    /// Its name.
    pub cluster_name: String,
    /// The node that made it.
    pub node_id: u64,
    /// That node's mode then (`leader`, `follower`, `read-only`): a read-only standby's
    /// backup is its local state, `last_contact_ms` old.
    pub node_mode: String,
    /// Milliseconds since that node had last heard from a leader (a quorum, on a leader).
    pub last_contact_ms: u64,
    /// The last log index in the backup.
    pub applied_index: u64,
    /// Its term.
    pub applied_term: u64,
    /// The state's global revision.
    pub revision: u64,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// What it holds.
    pub counts: Counts,
    /// The seal configuration: which shares unseal the restored data.
    pub seal: SealSummary,
    /// The snapshot section.
    pub snapshot: Section,
}

/// Records in a backup, by kind (counted from their storage keys, which are plaintext).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// KV v2 secrets (one metadata record each).
    pub secrets: u64,
    /// Stored versions of them.
    pub versions: u64,
    /// Userpass users.
    pub users: u64,
    /// ACL policies (besides the built-in `default` and `root`).
    pub policies: u64,
    /// Tokens.
    pub tokens: u64,
    /// Records of the merged audit log.
    pub audit_records: u64,
    /// Every record, of any kind.
    pub records: u64,
}

impl Counts {
    /// Counts one stored key.
    pub fn add(&mut self, key: &[u8]) {
        self.records += 1;
        match keys::classify(key) {
            Some(StoredKind::Secret) => self.secrets += 1,
            Some(StoredKind::Version) => self.versions += 1,
            Some(StoredKind::User) => self.users += 1,
            Some(StoredKind::Policy) => self.policies += 1,
            Some(StoredKind::Token) => self.tokens += 1,
            Some(StoredKind::AuditRecord) => self.audit_records += 1,
            None => {}
        }
    }
}

/// The seal configuration as a backup shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealSummary {
    /// Shares the root key was split into.
    pub secret_shares: u8,
    /// Shares needed to unseal.
    pub secret_threshold: u8,
    /// Salt of the fingerprints (hex).
    pub share_salt: String,
    /// SHA-256(salt | share) of each share (hex).
    pub share_fingerprints: Vec<String>,
}

/// A section of the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// Its length.
    pub bytes: u64,
    /// Its SHA-256 (hex).
    pub sha256: String,
}

/// Why a file is not a usable backup.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    /// Not a Coffer backup at all.
    #[error("not a Coffer backup file")]
    NotABackup,
    /// Shorter than its manifest says.
    #[error("the backup file is truncated: {have} bytes, its manifest needs {want}")]
    Truncated {
        /// The file's length.
        have: u64,
        /// The length its manifest implies.
        want: u64,
    },
    /// Longer than its manifest says.
    #[error("the backup file has {0} bytes after its end: it was changed")]
    TrailingBytes(u64),
    /// Made by a newer version.
    #[error(
        "the backup was made by a newer Coffer (format {0}); this version reads format {FORMAT}"
    )]
    NewerFormat(u32),
    /// The checksum does not match.
    #[error("the backup's checksum does not match: the file was changed or damaged")]
    Checksum,
    /// The structure is wrong (the manifest, or the snapshot inside).
    #[error("the backup is corrupt: {0}")]
    Corrupt(String),
    /// Reading failed.
    #[error("reading the backup: {0}")]
    Io(String),
}

fn io(e: std::io::Error) -> BackupError {
    BackupError::Io(e.to_string())
}

/// The bytes before the snapshot: magic, manifest length, manifest.
pub fn header_bytes(manifest: &Manifest) -> Vec<u8> {
    let json = serde_json::to_vec_pretty(manifest).expect("a manifest always serializes");
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// The MAC of a backup whose checksum is `digest`, under the keyring-derived `key`.
pub fn mac(key: &Key, digest: &[u8; 32]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key.expose()).expect("HMAC takes any key length");
    m.update(MAGIC);
    m.update(digest);
    m.finalize().into_bytes().into()
}

/// Whether `tag` is the MAC of `digest` under `key` (constant time).
pub fn mac_matches(key: &Key, digest: &[u8; 32], tag: &[u8; 32]) -> bool {
    let mut m = Hmac::<Sha256>::new_from_slice(key.expose()).expect("HMAC takes any key length");
    m.update(MAGIC);
    m.update(digest);
    m.verify_slice(tag).is_ok()
}

/// A backup that passed every check that needs no key.
#[derive(Clone, Debug)]
pub struct Verified {
    /// Its manifest.
    pub manifest: Manifest,
    /// Where the snapshot starts in the file.
    pub snapshot_offset: u64,
    /// The checksum of the file (before the trailer).
    pub digest: [u8; 32],
    /// The MAC the file carries (checked once the keys are at hand).
    pub mac: [u8; 32],
}

/// Reads and checks a whole backup without any key: magic, manifest, format, length, the
/// checksum, and the snapshot inside — every record, its framing and checksum, and that it
/// is what the manifest says (length, hash, index, counts). `visit` sees every record of the
/// snapshot (the key and its stored value) as the check passes it, so a caller can collect
/// what it needs in the same pass; nothing it sees may be trusted unless this returns `Ok`.
pub fn open<R: Read + Seek>(
    file: &mut R,
    visit: &mut dyn FnMut(&[u8], &[u8]),
) -> Result<Verified, BackupError> {
    let len = file.seek(SeekFrom::End(0)).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut magic = [0u8; 11];
    if len < MAGIC.len() as u64 + 4 {
        return Err(BackupError::NotABackup);
    }
    file.read_exact(&mut magic).map_err(io)?;
    if &magic != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let mut mlen = [0u8; 4];
    file.read_exact(&mut mlen).map_err(io)?;
    let mlen = u32::from_be_bytes(mlen);
    if mlen > MAX_MANIFEST_BYTES {
        return Err(BackupError::Corrupt(format!(
            "a manifest of {mlen} bytes is over the {MAX_MANIFEST_BYTES}-byte bound"
        )));
    }
    let snapshot_offset = MAGIC.len() as u64 + 4 + u64::from(mlen);
    if len < snapshot_offset {
        return Err(BackupError::Truncated {
            have: len,
            want: snapshot_offset + TRAILER_BYTES,
        });
    }
    let mut json = vec![0u8; mlen as usize];
    file.read_exact(&mut json).map_err(io)?;
    let format = serde_json::from_slice::<serde_json::Value>(&json)
        .ok()
        .and_then(|v| v.get("format")?.as_u64())
        .ok_or_else(|| BackupError::Corrupt("the manifest is not readable".into()))?;
    if format > u64::from(FORMAT) {
        return Err(BackupError::NewerFormat(
            u32::try_from(format).unwrap_or(u32::MAX),
        ));
    }
    let manifest: Manifest = serde_json::from_slice(&json)
        .map_err(|e| BackupError::Corrupt(format!("the manifest is not readable: {e}")))?;
    let want = snapshot_offset
        .checked_add(manifest.snapshot.bytes)
        .and_then(|n| n.checked_add(TRAILER_BYTES))
        .ok_or_else(|| {
            BackupError::Corrupt("the manifest's snapshot length is impossible".into())
        })?;
    if len < want {
        return Err(BackupError::Truncated { have: len, want });
    }
    if len > want {
        return Err(BackupError::TrailingBytes(len - want));
    }
    // The checksum first: a damaged file is reported as damaged, whatever else is wrong.
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut whole = Sha256::new();
    copy_hashing(file, len - TRAILER_BYTES, &mut whole)?;
    let digest: [u8; 32] = whole.finalize().into();
    let mut trailer = [0u8; 64];
    file.read_exact(&mut trailer).map_err(io)?;
    if trailer[..32] != digest {
        return Err(BackupError::Checksum);
    }
    let mut mac = [0u8; 32];
    mac.copy_from_slice(&trailer[32..]);
    // Then the snapshot inside, record by record, against the manifest.
    file.seek(SeekFrom::Start(snapshot_offset)).map_err(io)?;
    let mut section_hash = Sha256::new();
    copy_hashing(file, manifest.snapshot.bytes, &mut section_hash)?;
    if hex::encode(section_hash.finalize()) != manifest.snapshot.sha256 {
        return Err(BackupError::Corrupt(
            "the snapshot does not match the manifest's hash".into(),
        ));
    }
    let mut section = SectionReader::new(file, snapshot_offset, manifest.snapshot.bytes)?;
    let StateSummary {
        header,
        counts,
        seal,
    } = summarize(&mut section, visit)
        .map_err(|e| BackupError::Corrupt(format!("the snapshot inside: {e}")))?;
    let index = header.last_applied.map_or(0, |l| l.index);
    // What `inspect` shows about the seal and the cluster is what the state holds.
    let seal_matches = seal.is_some_and(|s| {
        s.cluster_id == manifest.cluster_id
            && s.secret_shares == manifest.seal.secret_shares
            && s.secret_threshold == manifest.seal.secret_threshold
            && s.share_salt == manifest.seal.share_salt
            && s.share_fingerprints == manifest.seal.share_fingerprints
    });
    if index != manifest.applied_index || counts != manifest.counts || !seal_matches {
        return Err(BackupError::Corrupt(
            "the manifest does not describe the snapshot inside".into(),
        ));
    }
    Ok(Verified {
        manifest,
        snapshot_offset,
        digest,
        mac,
    })
}

/// What one pass over a state (an engine snapshot) finds.
pub struct StateSummary {
    /// The snapshot's header (applied log id, revision).
    pub header: coffer_raft::SnapshotHeader,
    /// Its records by kind.
    pub counts: Counts,
    /// Its seal configuration, if it holds a readable one.
    pub seal: Option<SealConfig>,
}

/// Reads a whole engine snapshot once, checking its framing: counts its records by kind and
/// finds its seal configuration; `visit` sees every record too.
pub fn summarize<R: Read + Seek>(
    snapshot: &mut R,
    visit: &mut dyn FnMut(&[u8], &[u8]),
) -> Result<StateSummary, String> {
    let mut counts = Counts::default();
    let mut seal = None;
    let header = coffer_raft::scan_snapshot(snapshot, &mut |key, entry| {
        counts.add(key);
        if key == keys::SEAL_CONFIG {
            seal = serde_json::from_slice(&entry.value).ok();
        }
        visit(key, &entry.value);
    })
    .map_err(|e| e.to_string())?;
    Ok(StateSummary {
        header,
        counts,
        seal,
    })
}

impl From<&SealConfig> for SealSummary {
    fn from(seal: &SealConfig) -> Self {
        SealSummary {
            secret_shares: seal.secret_shares,
            secret_threshold: seal.secret_threshold,
            share_salt: seal.share_salt.clone(),
            share_fingerprints: seal.share_fingerprints.clone(),
        }
    }
}

/// Reads `n` bytes of `file` into `hasher`, in bounded chunks.
fn copy_hashing<R: Read>(file: &mut R, n: u64, hasher: &mut Sha256) -> Result<(), BackupError> {
    let mut left = n;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        file.read_exact(&mut buf[..want]).map_err(io)?;
        hasher.update(&buf[..want]);
        left -= want as u64;
    }
    Ok(())
}

/// A reader that hashes what passes through it (SHA-256, hex at the end). Seeking back to
/// the start begins the hash again (a snapshot scan seeks to the end for the length, then
/// reads once from the start).
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The hex SHA-256 of everything read.
    pub fn finish(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<R: Seek> Seek for HashingReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let at = self.inner.seek(pos)?;
        if at == 0 {
            self.hasher = Sha256::new();
        }
        Ok(at)
    }
}

/// One section of a seekable file, itself seekable: the snapshot inside a backup.
pub struct SectionReader<'a, R> {
    /// The file.
    inner: &'a mut R,
    /// Where the section starts.
    start: u64,
    /// Its length.
    len: u64,
    /// The position inside the section.
    pos: u64,
}

impl<'a, R: Read + Seek> SectionReader<'a, R> {
    /// The `len` bytes of `inner` from `start`, positioned at their start.
    pub fn new(inner: &'a mut R, start: u64, len: u64) -> Result<Self, BackupError> {
        inner.seek(SeekFrom::Start(start)).map_err(io)?;
        Ok(Self {
            inner,
            start,
            len,
            pos: 0,
        })
    }
}

impl<R: Read + Seek> Read for SectionReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..want])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for SectionReader<'_, R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => i128::from(n),
            SeekFrom::End(d) => i128::from(self.len) + i128::from(d),
            SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
        };
        if target < 0 || target > i128::from(self.len) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek outside the section",
            ));
        }
        self.pos = target as u64;
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        Ok(self.pos)
    }
}

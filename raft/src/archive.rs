//! Archive segments: a range of the store moved out of the replicated state into a file.
//!
//! [`crate::Op::Archive`] moves every key in a range into a segment file under the node's
//! `archive/` directory and deletes the keys, in one applied entry. Every replica applying
//! that entry writes a byte-identical file (the state is the same at that index), so the
//! segment needs no transfer of its own; a replica that skipped the entry by installing a
//! snapshot does not hold it (see ARCHITECTURE.md). The values are stored as the state held
//! them (ciphertext in Coffer: a segment is as sealed as the store was).
//!
//! A segment is named by its digest, the SHA-256 of its framed records (each: key length
//! u32 BE, key, value length u32 BE, value, in key order), which the transaction that moved
//! it checked ([`crate::Check::RangeDigest`]): whoever recorded the digest (Coffer's audit
//! archive anchor) can tell the file apart from any other, and [`ArchiveDir::read`] refuses
//! one whose content does not hash to its name.
//!
//! File: [`MAGIC`], then the framed records. Written to a temporary name, fsynced, renamed
//! and the directory fsynced before the keys are deleted, so a crash leaves either the keys
//! (and the entry is applied again) or the file.

use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// First bytes of a segment file.
pub const MAGIC: &[u8] = b"coffer archive segment v1\n";

/// A segment's `(key, value)` records, in key order.
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Largest segment: a range guarded by [`crate::Check::RangeDigest`] must fit (framed
/// records), and nothing larger is read back. Coffer moves at most 8 MiB at a time.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 20;

/// Whether `txn` archives a range (its first op is [`crate::Op::Archive`]).
pub(crate) fn in_txn(txn: &crate::Txn) -> bool {
    matches!(txn.ops.first(), Some(crate::Op::Archive { .. }))
}

/// SHA-256 over the framed `(key, value)` records, in the order given.
pub fn digest<'a>(records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> [u8; 32] {
    let mut h = Sha256::new();
    for (key, value) in records {
        h.update((key.len() as u32).to_be_bytes());
        h.update(key);
        h.update((value.len() as u32).to_be_bytes());
        h.update(value);
    }
    h.finalize().into()
}

/// Why a segment could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The file is not a segment, is cut short, or its records are malformed.
    #[error("archive segment {0} is malformed: {1}")]
    Malformed(String, &'static str),
    /// The content does not hash to the name: it was altered.
    #[error("archive segment {0} does not match its digest: it was altered")]
    Altered(String),
    /// Reading failed.
    #[error("archive segment {0}: {1}")]
    Io(String, std::io::Error),
}

/// The directory of a node's archive segments.
#[derive(Clone, Debug)]
pub struct ArchiveDir {
    path: PathBuf,
}

impl ArchiveDir {
    /// The segments under `path` (created when the first is written).
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the segment with this digest lives.
    pub fn segment_path(&self, digest: &[u8; 32]) -> PathBuf {
        self.path.join(format!("{}.seg", hex::encode(digest)))
    }

    /// Writes a segment durably (replacing an earlier copy of the same digest: an entry
    /// applied again after a crash writes the same bytes).
    pub(crate) fn write(
        &self,
        digest: &[u8; 32],
        records: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), String> {
        let fail = |what: &str, e: std::io::Error| format!("archive segment: {what}: {e}");
        if !self.path.is_dir() {
            std::fs::create_dir_all(&self.path).map_err(|e| fail("creating the directory", e))?;
            // The new directory's entry is durable before a segment in it is relied on.
            if let Some(parent) = self.path.parent() {
                std::fs::File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| fail("syncing the parent directory", e))?;
            }
        }
        let target = self.segment_path(digest);
        let tmp = target.with_extension("seg.tmp");
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&tmp).map_err(|e| fail("creating the file", e))?,
        );
        file.write_all(MAGIC).map_err(|e| fail("writing", e))?;
        for (key, value) in records {
            for part in [key.as_slice(), value.as_slice()] {
                file.write_all(&(part.len() as u32).to_be_bytes())
                    .and_then(|()| file.write_all(part))
                    .map_err(|e| fail("writing", e))?;
            }
        }
        let file = file
            .into_inner()
            .map_err(|e| fail("writing", e.into_error()))?;
        file.sync_all().map_err(|e| fail("syncing", e))?;
        std::fs::rename(&tmp, &target).map_err(|e| fail("renaming", e))?;
        std::fs::File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail("syncing the directory", e))
    }

    /// The records of the segment with this digest, checked against it; `None` if this
    /// node does not hold it.
    pub fn read(&self, digest: &[u8; 32]) -> Result<Option<Records>, SegmentError> {
        let name = hex::encode(digest);
        let path = self.segment_path(digest);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SegmentError::Io(name, e)),
        };
        let mut raw = Vec::new();
        file.take(MAX_SEGMENT_BYTES + MAGIC.len() as u64 + 1)
            .read_to_end(&mut raw)
            .map_err(|e| SegmentError::Io(name.clone(), e))?;
        if raw.len() as u64 > MAX_SEGMENT_BYTES + MAGIC.len() as u64 {
            return Err(SegmentError::Malformed(name, "larger than any segment"));
        }
        let body = raw
            .strip_prefix(MAGIC)
            .ok_or_else(|| SegmentError::Malformed(name.clone(), "not an archive segment"))?;
        let records =
            parse(body).ok_or_else(|| SegmentError::Malformed(name.clone(), "cut short"))?;
        let found = digest_of(&records);
        if found != *digest {
            return Err(SegmentError::Altered(name));
        }
        Ok(Some(records))
    }

    /// How many segment files this node holds, and their bytes.
    pub fn usage(&self) -> (u64, u64) {
        let Ok(dir) = std::fs::read_dir(&self.path) else {
            return (0, 0);
        };
        dir.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .fold((0, 0), |(n, bytes), e| {
                (n + 1, bytes + e.metadata().map_or(0, |m| m.len()))
            })
    }

    /// Digests of the segments this node holds.
    pub fn list(&self) -> Vec<[u8; 32]> {
        let Ok(dir) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let mut out: Vec<[u8; 32]> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let hex_name = name.strip_suffix(".seg")?;
                hex::decode(hex_name).ok()?.try_into().ok()
            })
            .collect();
        out.sort();
        out
    }
}

fn digest_of(records: &[(Vec<u8>, Vec<u8>)]) -> [u8; 32] {
    digest(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
}

fn parse(mut body: &[u8]) -> Option<Records> {
    let take = |body: &mut &[u8]| -> Option<Vec<u8>> {
        let len = u32::from_be_bytes(body.get(..4)?.try_into().ok()?) as usize;
        let part = body.get(4..4 + len)?.to_vec();
        *body = &body[4 + len..];
        Some(part)
    };
    let mut out = Vec::new();
    while !body.is_empty() {
        let key = take(&mut body)?;
        let value = take(&mut body)?;
        out.push((key, value));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Records {
        (0..5u8)
            .map(|i| (format!("k/{i}").into_bytes(), vec![i; 40 + i as usize]))
            .collect()
    }

    #[test]
    fn a_segment_reads_back_under_its_digest_and_an_altered_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let archive = ArchiveDir::new(dir.path().join("archive"));
        let recs = records();
        let d = digest_of(&recs);
        assert!(archive.read(&d).unwrap().is_none(), "not held yet");
        archive.write(&d, &recs).unwrap();
        assert_eq!(archive.read(&d).unwrap().unwrap(), recs);
        assert_eq!(archive.list(), vec![d]);
        // Written again (an entry applied twice): the same file.
        archive.write(&d, &recs).unwrap();
        assert_eq!(archive.read(&d).unwrap().unwrap(), recs);

        let path = archive.segment_path(&d);
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        assert!(matches!(archive.read(&d), Err(SegmentError::Altered(_))));
        std::fs::write(&path, &raw[..raw.len() - 3]).unwrap();
        assert!(matches!(
            archive.read(&d),
            Err(SegmentError::Malformed(_, "cut short"))
        ));
        std::fs::write(&path, b"something else").unwrap();
        assert!(matches!(
            archive.read(&d),
            Err(SegmentError::Malformed(_, "not an archive segment"))
        ));
    }
}

//! The spool's files: the epoch id, segment names and listing, and recovery of a torn tail.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use super::line::SpoolLine;

/// The spool's epoch id: read from `dir/epoch`, or made (and made durable) for a new spool.
pub(super) fn load_epoch(dir: &Path) -> Result<String, String> {
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
pub(super) fn first_sealed(segments: &BTreeMap<u64, PathBuf>) -> u64 {
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

pub(super) fn segment_name(first: u64) -> String {
    format!("spool-{first:020}.jsonl")
}

pub(super) fn list_segments(dir: &Path) -> Result<BTreeMap<u64, PathBuf>, String> {
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
pub(super) fn recover_tail(path: &Path) -> Result<Option<(u64, String)>, String> {
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

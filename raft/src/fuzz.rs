//! Fuzz targets of the replicated engine's parsers. Each returns for every input and never
//! panics; see `vault/src/fuzz.rs` for how they are run.

use sha2::{Digest, Sha256};

/// A snapshot file: the input is taken as the file's body and given a valid checksum, so the
/// framing, header, records and count behind the checksum are what gets exercised (a random
/// checksum would stop every input at the first check).
pub fn snapshot(data: &[u8]) {
    let _ = crate::snapshot::inspect(&mut std::io::Cursor::new(data));
    let mut file = data.to_vec();
    let digest = Sha256::digest(&file);
    file.extend_from_slice(&digest);
    let _ = crate::snapshot::inspect(&mut std::io::Cursor::new(file));
}

/// A peer frame: a length-prefixed postcard message as the peer server reads it.
pub fn peer_frame(data: &[u8]) {
    let _ = postcard::from_bytes::<crate::transport::PeerRequest>(data);
    let _ = postcard::from_bytes::<crate::transport::PeerResponse>(data);
    let _ = postcard::from_bytes::<crate::types::Command>(data);
}

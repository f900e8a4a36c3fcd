//! The replication bootstrap pack: one file that lets a new node join, written and read as
//! a stream so that a pack of any size needs little memory on either side.
//!
//! File: `COFFERPACK2\n` | Argon2id m_cost (4, BE) | t_cost (4) | p_cost (4) | salt (16) |
//! nonce prefix (7) | key check (16) | segments. The key is Argon2id(passphrase, salt). Each
//! segment is a length word (u32 BE: the sealed length, its top bit set on the last segment)
//! and AES-256-GCM ciphertext+tag under the nonce `prefix | counter (u32 BE) | last (0/1)`,
//! with the header as associated data (the STREAM construction): segments cannot be
//! reordered, dropped, cut short or moved between packs, and a changed parameter or salt
//! fails like any other tampering. Segment 0 holds the postcard-encoded [`PackContents`]
//! without its snapshot; the snapshot follows in segments of [`SEGMENT_BYTES`]. The key
//! check (SHA-256 of the key and a label, truncated) tells a wrong passphrase from a changed
//! file; it helps a guesser no more than trying to decrypt would.

use std::io::{Read, Write};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// The file's first bytes.
pub const MAGIC: &[u8] = b"COFFERPACK2\n";
const SALT: usize = 16;
const PREFIX: usize = 7;
const CHECK: usize = 16;
const HEADER: usize = MAGIC.len() + 12 + SALT + PREFIX + CHECK;
/// Plaintext bytes per snapshot segment.
pub const SEGMENT_BYTES: usize = 1 << 20;
/// The largest sealed segment a reader accepts (the contents segment is a few KiB; a
/// corrupt length must not make a reader allocate gigabytes).
const MAX_SEGMENT: u32 = 4 << 20;
/// The length word's flag for the last segment.
const LAST: u32 = 1 << 31;
/// AES-GCM's tag.
const TAG: usize = 16;
/// Argon2id cost: 64 MiB, 3 passes, 1 lane (about a third of a second on one core). The
/// passphrase is random, so this guards against a weak custom `--passphrase-file` more than
/// against brute force of the generated one.
#[cfg(not(test))]
const M_COST: u32 = 64 * 1024;
/// Unit tests check the framing, not Argon2's cost (64 MiB per open is slow in a debug build).
#[cfg(test)]
const M_COST: u32 = 64;
const T_COST: u32 = 3;
const P_COST: u32 = 1;
/// Parameters a pack may demand of the machine that opens it (bounds memory and time).
const MAX_M_COST: u32 = 1024 * 1024;
const MAX_T_COST: u32 = 16;

/// A member's addresses as the pack lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackMember {
    /// Node id.
    pub id: u64,
    /// HTTPS API address.
    pub api_addr: String,
    /// Peer (mutual TLS) address.
    pub peer_addr: String,
    /// SHA-256 of the member's pinned peer certificate: the joining node accepts only it.
    pub cert_sha256: String,
}

/// Everything a new node needs, encrypted as a whole. Key material is zeroized on drop and
/// never printed by `Debug`.
#[derive(Clone, Serialize, Deserialize)]
pub struct PackContents {
    /// Random 128-bit id, hex; single use, pending on the cluster until consumed.
    pub pack_id: String,
    /// The cluster's id (from `sys/init`).
    pub cluster_id: String,
    /// The cluster's name.
    pub cluster_name: String,
    /// Unix seconds the pack was made and stops being accepted.
    pub created_at: u64,
    /// Unix seconds after which the pack is refused.
    pub expires_at: u64,
    /// The new node's id.
    pub node_id: u64,
    /// Whether it is promoted to voter once caught up.
    pub voter: bool,
    /// The new node's HTTPS API address.
    pub api_addr: String,
    /// The new node's peer address.
    pub peer_addr: String,
    /// The cluster CA certificate, PEM.
    pub ca_cert_pem: String,
    /// The pack's registration certificate (binds the new node's id) and key, PEM. It may
    /// register once, before expiry, and do nothing else: at registration the node gets its
    /// member certificate for a key it made itself.
    pub node_cert_pem: String,
    /// See `node_cert_pem`.
    pub node_key_pem: String,
    /// The new node's API certificate and key, PEM.
    pub api_cert_pem: String,
    /// See `api_cert_pem`.
    pub api_key_pem: String,
    /// Current members.
    pub members: Vec<PackMember>,
    /// The root key, hex, when the pack was made with `--include-unseal-key`.
    pub unseal_key_hex: Option<String>,
    /// A recent snapshot of the replicated state (its values are ciphertext).
    pub snapshot: Vec<u8>,
}

impl std::fmt::Debug for PackContents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackContents")
            .field("pack_id", &self.pack_id)
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .field("voter", &self.voter)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Drop for PackContents {
    fn drop(&mut self) {
        self.node_key_pem.zeroize();
        self.api_key_pem.zeroize();
        if let Some(k) = &mut self.unseal_key_hex {
            k.zeroize();
        }
    }
}

/// Why a pack does not open. Each says which, so an operator knows what to fix.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    /// Not a pack file, or cut short.
    #[error("not a Coffer bootstrap pack (bad header or truncated file)")]
    Malformed,
    /// The passphrase does not derive the pack's key.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The passphrase is right but the contents fail authentication: the file was changed.
    #[error("the pack file was tampered with or corrupted (authentication failed)")]
    Tampered,
    /// Decrypted but its contents do not decode: made by an incompatible version.
    #[error("pack contents are unreadable: {0}")]
    Contents(String),
    /// Its validity ended.
    #[error("pack expired at {expired_at} (unix seconds); make a new one")]
    Expired {
        /// When it expired.
        expired_at: u64,
    },
    /// The file ends before its last segment.
    #[error("the pack file is truncated: it ends before its last part")]
    Truncated,
    /// Reading or writing the pack failed.
    #[error("reading or writing the pack: {0}")]
    Io(String),
    /// The cost parameters are out of bounds.
    #[error("pack demands unreasonable key-derivation cost (m={m}, t={t})")]
    Cost {
        /// Memory cost in KiB.
        m: u32,
        /// Passes.
        t: u32,
    },
}

fn key_check(key: &[u8; 32]) -> [u8; CHECK] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(key);
    h.update(b"coffer bootstrap pack key check");
    let digest = h.finalize();
    let mut out = [0u8; CHECK];
    out.copy_from_slice(&digest[..CHECK]);
    out
}

fn derive(
    passphrase: &str,
    salt: &[u8],
    m: u32,
    t: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>, PackError> {
    let params = Params::new(m, t, p, Some(32)).map_err(|_| PackError::Cost { m, t })?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), salt, &mut *key)
        .map_err(|_| PackError::Cost { m, t })?;
    Ok(key)
}

impl PackContents {
    /// The contents without the snapshot (segment 0 of the file).
    fn without_snapshot(&self) -> PackContents {
        PackContents {
            pack_id: self.pack_id.clone(),
            cluster_id: self.cluster_id.clone(),
            cluster_name: self.cluster_name.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            node_id: self.node_id,
            voter: self.voter,
            api_addr: self.api_addr.clone(),
            peer_addr: self.peer_addr.clone(),
            ca_cert_pem: self.ca_cert_pem.clone(),
            node_cert_pem: self.node_cert_pem.clone(),
            node_key_pem: self.node_key_pem.clone(),
            api_cert_pem: self.api_cert_pem.clone(),
            api_key_pem: self.api_key_pem.clone(),
            members: self.members.clone(),
            unseal_key_hex: self.unseal_key_hex.clone(),
            snapshot: Vec::new(),
        }
    }
}

fn nonce(prefix: &[u8], counter: u32, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..PREFIX].copy_from_slice(prefix);
    n[PREFIX..PREFIX + 4].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    n
}

fn write_err(e: std::io::Error) -> PackError {
    PackError::Io(e.to_string())
}

/// Encrypts `contents` (its `snapshot` field ignored) and the snapshot read from `snapshot`
/// under `passphrase`, writing the pack to `out` as it goes; returns the pack's length.
/// Memory: one segment, whatever the snapshot's size.
pub fn seal_pack_to(
    contents: &PackContents,
    snapshot: &mut dyn Read,
    passphrase: &str,
    out: &mut dyn Write,
) -> Result<u64, PackError> {
    let mut salt = [0u8; SALT];
    let mut prefix = [0u8; PREFIX];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut prefix);
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    for v in [M_COST, T_COST, P_COST] {
        header.extend_from_slice(&v.to_be_bytes());
    }
    header.extend_from_slice(&salt);
    header.extend_from_slice(&prefix);
    let key = derive(passphrase, &salt, M_COST, T_COST, P_COST)?;
    header.extend_from_slice(&key_check(&key));
    let cipher = Aes256Gcm::new((&*key).into());
    out.write_all(&header).map_err(write_err)?;
    let mut written = header.len() as u64;
    let mut seal = |counter: u32, last: bool, plain: &[u8]| -> Result<(), PackError> {
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce(&prefix, counter, last)),
                Payload {
                    msg: plain,
                    aad: &header,
                },
            )
            .map_err(|_| PackError::Tampered)?;
        let len = u32::try_from(sealed.len()).map_err(|_| PackError::Malformed)?;
        let word = if last { len | LAST } else { len };
        out.write_all(&word.to_be_bytes()).map_err(write_err)?;
        out.write_all(&sealed).map_err(write_err)?;
        written += 4 + sealed.len() as u64;
        Ok(())
    };
    let meta = Zeroizing::new(
        postcard::to_allocvec(&contents.without_snapshot())
            .map_err(|e| PackError::Contents(e.to_string()))?,
    );
    // Each segment is read whole before it is sealed, so the last one is known as such.
    let mut current = Zeroizing::new(vec![0u8; SEGMENT_BYTES]);
    let mut current_len = fill(snapshot, &mut current)?;
    seal(0, current_len == 0, &meta)?;
    let mut counter = 1u32;
    let mut next = Zeroizing::new(vec![0u8; SEGMENT_BYTES]);
    while current_len > 0 {
        let next_len = if current_len == SEGMENT_BYTES {
            fill(snapshot, &mut next)?
        } else {
            0
        };
        seal(counter, next_len == 0, &current[..current_len])?;
        counter = counter
            .checked_add(1)
            .ok_or_else(|| PackError::Contents("the snapshot is too large for a pack".into()))?;
        std::mem::swap(&mut current, &mut next);
        current_len = next_len;
    }
    out.flush().map_err(write_err)?;
    Ok(written)
}

/// Reads until `buf` is full or the source ends; returns how much was read.
fn fill(source: &mut dyn Read, buf: &mut [u8]) -> Result<usize, PackError> {
    let mut n = 0;
    while n < buf.len() {
        match source.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(PackError::Io(format!("reading the snapshot: {e}"))),
        }
    }
    Ok(n)
}

/// Encrypts `contents` with its snapshot under `passphrase`, in memory (small packs, tests).
pub fn seal_pack(contents: &PackContents, passphrase: &str) -> Result<Vec<u8>, PackError> {
    let mut out = Vec::new();
    seal_pack_to(
        contents,
        &mut contents.snapshot.as_slice(),
        passphrase,
        &mut out,
    )?;
    Ok(out)
}

/// The cleartext header of a pack file: key-derivation cost, salt, nonce prefix.
#[derive(Debug)]
pub struct PackHeader<'a> {
    /// Argon2id memory cost, KiB.
    pub m_cost: u32,
    /// Argon2id passes.
    pub t_cost: u32,
    /// Argon2id lanes.
    pub p_cost: u32,
    /// The salt.
    pub salt: &'a [u8],
    /// The nonce prefix.
    pub nonce: &'a [u8],
}

/// Checks a pack header's framing and cost bounds before any key derivation runs.
pub fn parse_header(file: &[u8]) -> Result<PackHeader<'_>, PackError> {
    if file.len() < HEADER || !file.starts_with(MAGIC) {
        return Err(PackError::Malformed);
    }
    let word = |i: usize| {
        let at = MAGIC.len() + 4 * i;
        u32::from_be_bytes([file[at], file[at + 1], file[at + 2], file[at + 3]])
    };
    let (m, t, p) = (word(0), word(1), word(2));
    if m > MAX_M_COST || t > MAX_T_COST || p != 1 {
        return Err(PackError::Cost { m, t });
    }
    Ok(PackHeader {
        m_cost: m,
        t_cost: t,
        p_cost: p,
        salt: &file[MAGIC.len() + 12..MAGIC.len() + 12 + SALT],
        nonce: &file[HEADER - CHECK - PREFIX..HEADER - CHECK],
    })
}

/// Decodes decrypted pack contents and checks they have not expired at `now`.
pub fn decode_contents(plain: &[u8], now: u64) -> Result<PackContents, PackError> {
    let contents: PackContents =
        postcard::from_bytes(plain).map_err(|e| PackError::Contents(e.to_string()))?;
    if now >= contents.expires_at {
        return Err(PackError::Expired {
            expired_at: contents.expires_at,
        });
    }
    Ok(contents)
}

/// The snapshot inside a pack, decrypted and authenticated segment by segment as it is read.
/// A read fails (`InvalidData`, carrying the [`PackError`]) at the first segment that does
/// not authenticate, or where the file ends before its last segment.
pub struct PackSnapshot<R> {
    inner: R,
    cipher: Aes256Gcm,
    header: Vec<u8>,
    prefix: [u8; PREFIX],
    counter: u32,
    done: bool,
    plain: Zeroizing<Vec<u8>>,
    pos: usize,
}

impl<R: Read> PackSnapshot<R> {
    /// The next segment: `(plaintext, last)`.
    fn segment(&mut self) -> Result<(Zeroizing<Vec<u8>>, bool), PackError> {
        let mut word = [0u8; 4];
        read_exact(&mut self.inner, &mut word)?;
        let word = u32::from_be_bytes(word);
        let (len, last) = (word & !LAST, word & LAST != 0);
        if len < TAG as u32 || len > MAX_SEGMENT {
            return Err(PackError::Tampered);
        }
        let mut sealed = vec![0u8; len as usize];
        read_exact(&mut self.inner, &mut sealed)?;
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(&nonce(&self.prefix, self.counter, last)),
                Payload {
                    msg: &sealed,
                    aad: &self.header,
                },
            )
            .map_err(|_| PackError::Tampered)?;
        self.counter = self.counter.wrapping_add(1);
        Ok((Zeroizing::new(plain), last))
    }

    /// Checks that nothing follows the last segment.
    fn at_end(&mut self) -> Result<(), PackError> {
        let mut byte = [0u8; 1];
        match self.inner.read(&mut byte) {
            Ok(0) => Ok(()),
            Ok(_) => Err(PackError::Tampered),
            Err(e) => Err(PackError::Io(e.to_string())),
        }
    }
}

fn read_exact(r: &mut dyn Read, buf: &mut [u8]) -> Result<(), PackError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => PackError::Truncated,
        _ => PackError::Io(e.to_string()),
    })
}

impl<R: Read> Read for PackSnapshot<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            let (plain, last) = self
                .segment()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if last {
                self.done = true;
                self.at_end()
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            }
            self.plain = plain;
            self.pos = 0;
        }
        let n = buf.len().min(self.plain.len() - self.pos);
        buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Opens a pack from a stream: checks the header, derives the key, authenticates and decodes
/// the contents (its `snapshot` empty) and checks expiry at `now`; the snapshot is then read
/// from the returned [`PackSnapshot`].
pub fn open_pack_stream<R: Read>(
    mut file: R,
    passphrase: &str,
    now: u64,
) -> Result<(PackContents, PackSnapshot<R>), PackError> {
    let mut header = vec![0u8; HEADER];
    file.read_exact(&mut header)
        .map_err(|_| PackError::Malformed)?;
    let parsed = parse_header(&header)?;
    let (m, t, p) = (parsed.m_cost, parsed.t_cost, parsed.p_cost);
    let key = derive(passphrase, parsed.salt, m, t, p)?;
    if key_check(&key)[..] != header[HEADER - CHECK..HEADER] {
        return Err(PackError::WrongPassphrase);
    }
    let mut prefix = [0u8; PREFIX];
    prefix.copy_from_slice(parsed.nonce);
    let mut reader = PackSnapshot {
        inner: file,
        cipher: Aes256Gcm::new((&*key).into()),
        header,
        prefix,
        counter: 0,
        done: false,
        plain: Zeroizing::new(Vec::new()),
        pos: 0,
    };
    let (meta, last) = reader.segment().map_err(|e| match e {
        PackError::Truncated => PackError::Malformed,
        other => other,
    })?;
    let contents = decode_contents(&meta, now)?;
    if last {
        reader.done = true;
        reader.at_end()?;
    }
    Ok((contents, reader))
}

/// Decrypts and authenticates a whole pack in memory (small packs, tests), then checks it has
/// not expired at `now` (unix seconds).
pub fn open_pack(file: &[u8], passphrase: &str, now: u64) -> Result<PackContents, PackError> {
    let (mut contents, mut snapshot) = open_pack_stream(file, passphrase, now)?;
    let mut bytes = Vec::new();
    snapshot.read_to_end(&mut bytes).map_err(|e| {
        e.into_inner()
            .and_then(|inner| inner.downcast::<PackError>().ok())
            .map_or(PackError::Tampered, |b| *b)
    })?;
    contents.snapshot = bytes;
    Ok(contents)
}

/// A fresh one-time passphrase: 25 characters from a 31-character alphabet without
/// look-alikes (about 124 bits), in groups of five for reading aloud.
pub fn generate_passphrase() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    // Rejection sampling keeps every character equally likely.
    let limit = 256 - 256 % ALPHABET.len();
    let mut chars = Vec::with_capacity(25);
    while chars.len() < 25 {
        let mut byte = [0u8; 1];
        rand::rngs::OsRng.fill_bytes(&mut byte);
        if usize::from(byte[0]) < limit {
            chars.push(ALPHABET[usize::from(byte[0]) % ALPHABET.len()] as char);
        }
    }
    chars
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(expires_at: u64) -> PackContents {
        PackContents {
            pack_id: "p1".into(),
            cluster_id: "c1".into(),
            cluster_name: "coffer".into(),
            created_at: 100,
            expires_at,
            node_id: 4,
            voter: true,
            api_addr: "https://127.0.0.4:8200".into(),
            peer_addr: "127.0.0.4:8201".into(),
            ca_cert_pem: "ca".into(),
            node_cert_pem: "cert".into(),
            node_key_pem: "key".into(),
            api_cert_pem: "acert".into(),
            api_key_pem: "akey".into(),
            members: vec![],
            unseal_key_hex: None,
            snapshot: vec![1, 2, 3],
        }
    }

    #[test]
    fn round_trip_and_each_refusal_says_which() {
        let file = seal_pack(&sample(1000), "right").unwrap();
        let opened = open_pack(&file, "right", 500).unwrap();
        assert_eq!(opened.node_id, 4);
        assert_eq!(opened.snapshot, vec![1, 2, 3]);

        assert_eq!(
            open_pack(&file, "wrong", 500).unwrap_err(),
            PackError::WrongPassphrase
        );
        let mut tampered = file.clone();
        let last = tampered.len() - 20;
        tampered[last] ^= 1;
        assert_eq!(
            open_pack(&tampered, "right", 500).unwrap_err(),
            PackError::Tampered
        );
        let mut nonce_changed = file.clone();
        nonce_changed[MAGIC.len() + 12 + SALT] ^= 1;
        assert_eq!(
            open_pack(&nonce_changed, "right", 500).unwrap_err(),
            PackError::Tampered
        );
        let mut salt_changed = file.clone();
        salt_changed[MAGIC.len() + 12] ^= 1;
        assert_eq!(
            open_pack(&salt_changed, "right", 500).unwrap_err(),
            PackError::WrongPassphrase,
            "another salt derives another key"
        );
        assert_eq!(
            open_pack(&file[..30], "right", 500).unwrap_err(),
            PackError::Malformed
        );
        assert_eq!(
            open_pack(&file[..file.len() - 1], "right", 500).unwrap_err(),
            PackError::Truncated
        );
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(
            open_pack(&longer, "right", 500).unwrap_err(),
            PackError::Tampered
        );
        assert_eq!(
            open_pack(&file, "right", 1000).unwrap_err(),
            PackError::Expired { expired_at: 1000 }
        );
        let mut costly = file.clone();
        costly[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            open_pack(&costly, "right", 500),
            Err(PackError::Cost { .. })
        ));
    }

    /// The segment boundaries of a pack: (offset of the length word, sealed length, last).
    fn segments(file: &[u8]) -> Vec<(usize, usize, bool)> {
        let mut out = Vec::new();
        let mut at = HEADER;
        while at < file.len() {
            let word = u32::from_be_bytes(file[at..at + 4].try_into().unwrap());
            let len = (word & !LAST) as usize;
            out.push((at, len, word & LAST != 0));
            at += 4 + len;
        }
        out
    }

    #[test]
    fn a_large_snapshot_streams_in_segments_that_cannot_be_cut_or_reordered() {
        let mut contents = sample(1000);
        contents.snapshot = (0..SEGMENT_BYTES * 5 / 2)
            .map(|i| (i % 251) as u8)
            .collect();
        let file = seal_pack(&contents, "right").unwrap();
        let segs = segments(&file);
        assert_eq!(segs.len(), 4, "contents and three snapshot segments");
        assert_eq!(
            segs.iter().map(|s| s.2).collect::<Vec<_>>(),
            vec![false, false, false, true]
        );
        // Streaming: the contents first, then the snapshot, read in small pieces.
        let (meta, mut snapshot) = open_pack_stream(file.as_slice(), "right", 500).unwrap();
        assert!(meta.snapshot.is_empty());
        let mut back = Vec::new();
        let mut piece = [0u8; 4096];
        loop {
            let n = snapshot.read(&mut piece).unwrap();
            if n == 0 {
                break;
            }
            back.extend_from_slice(&piece[..n]);
        }
        assert_eq!(back, contents.snapshot);

        // Cut after a whole segment: the missing last flag says it was cut.
        let (at, _, _) = segs[3];
        assert_eq!(
            open_pack(&file[..at], "right", 500).unwrap_err(),
            PackError::Truncated
        );
        // The last segment dropped and the one before relabelled as last: fails to open.
        let mut relabelled = file[..at].to_vec();
        let (at2, len2, _) = segs[2];
        relabelled[at2..at2 + 4].copy_from_slice(&((len2 as u32) | LAST).to_be_bytes());
        assert_eq!(
            open_pack(&relabelled, "right", 500).unwrap_err(),
            PackError::Tampered
        );
        // Two segments swapped: the counter in the nonce refuses it.
        let (a1, l1, _) = segs[1];
        let (a2, l2, _) = segs[2];
        let mut swapped = file[..a1].to_vec();
        swapped.extend_from_slice(&file[a2..a2 + 4 + l2]);
        swapped.extend_from_slice(&file[a1..a1 + 4 + l1]);
        swapped.extend_from_slice(&file[segs[3].0..]);
        assert_eq!(
            open_pack(&swapped, "right", 500).unwrap_err(),
            PackError::Tampered
        );
        // A huge length word is refused before anything is allocated.
        let mut huge = file.clone();
        huge[a1..a1 + 4].copy_from_slice(&(!LAST).to_be_bytes());
        assert_eq!(
            open_pack(&huge, "right", 500).unwrap_err(),
            PackError::Tampered
        );
    }

    #[test]
    fn debug_hides_keys_and_passphrases_differ() {
        let shown = format!("{:?}", sample(1));
        assert!(
            !shown.contains("akey") && !shown.contains("\"key\""),
            "{shown}"
        );
        let (a, b) = (generate_passphrase(), generate_passphrase());
        assert_ne!(a, b);
        assert_eq!(a.len(), 29);
    }
}

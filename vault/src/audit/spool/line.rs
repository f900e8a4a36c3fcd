//! One spool line: the chain fields in clear, the body sealed to the cluster's audit spool
//! key, and a MAC over (node, epoch, seq, hash) while the node is unsealed; and the check of
//! a whole segment file against those MACs.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::SpoolError;
use crate::audit::record::{AuditEvent, AuditRecord};
use crate::audit::sealing::{BatchSealer, SpoolKey};

/// One spool line: the chain fields in clear (so a sealed node can continue the chain), the
/// body sealed to the audit spool key — or, before the vault is initialized and no key exists
/// yet, in clear.
#[derive(Serialize, Deserialize)]
pub(super) struct SpoolLine {
    pub(super) node: u64,
    pub(super) seq: u64,
    pub(super) prev_hash: String,
    pub(super) hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) sealed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) event: Option<AuditEvent>,
    /// HMAC-SHA256 over (node, epoch, seq, hash), hex, when the node was unsealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) mac: Option<String>,
}

pub(super) const MAC_LABEL: &[u8] = b"coffer audit spool mac v1";

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
    pub(super) fn of(
        rec: &AuditRecord,
        sealer: Option<&BatchSealer>,
        mac_key: Option<&[u8; 32]>,
    ) -> Self {
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
    pub(super) fn is_sealed(&self) -> bool {
        self.sealed.is_some()
    }

    /// Checks what can be checked without opening the body: a clear body where none may be,
    /// and the MAC when the key is at hand. `Ok(false)` when the line has no MAC (written
    /// while the node was sealed, or before the cluster had a keyring).
    pub(super) fn authenticate(
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
    pub(super) fn record(
        self,
        epoch: &str,
        key: Option<&SpoolKey>,
    ) -> Result<AuditRecord, SpoolError> {
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

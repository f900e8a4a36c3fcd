//! Audit records and their hash chain. Each node numbers its records 1, 2, 3, … and links each
//! to the previous one by hash, so a gap, a fork or an edited record shows when the chain is
//! checked. Nothing here may ever hold a secret value, a password or a token.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Hash that precedes a node's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, as the node saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// `request` (written before a state-changing request runs), `response` (written before
    /// the answer leaves), or empty for what the node does by itself (mode changes, joins).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// RFC 3339 time at the origin node.
    pub time: String,
    /// Who: the person (`alice` for her login and for everything her tokens do, `root`),
    /// `node N` for a peer, `system`, or `anonymous`.
    pub actor: String,
    /// The token's display name (`userpass-alice`, `token-ci`), if a token was presented.
    #[serde(default)]
    pub display_name: String,
    /// HMAC-SHA256 of the token accessor (correlates without revealing it), or empty.
    pub accessor_hmac: String,
    /// How the actor authenticated: `userpass`, `token`, `bootstrap-pack`, or `none`.
    pub auth_method: String,
    /// The client's IP address.
    pub client_addr: String,
    /// What was attempted (`read`, `write`, `list`, `login`, `token.create`, …).
    pub operation: String,
    /// The API path.
    pub path: String,
    /// `ok`, `denied`, `refused` (bad input, sealed, rate limited), `not_found`, or `error`.
    pub outcome: String,
    /// HTTP status of the answer.
    pub status: u16,
    /// The node's mode when it answered (`leader`, `follower`, `read-only`, `sealed`).
    pub mode: String,
    /// The request id the client saw.
    pub request_id: String,
    /// What happened, in words, for what the node does by itself (a mode change's reason).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// A chained record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Origin node.
    pub node: u64,
    /// The origin spool's epoch: a random id made when the spool was created. A node id
    /// that is removed and joined again (a fresh data directory) starts a new epoch, whose
    /// chain starts again at 1 and is merged under its own cursor.
    #[serde(default)]
    pub epoch: String,
    /// Position in the origin node's chain, from 1.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// Hash of the origin node's previous record ([`GENESIS`] before the first).
    pub prev_hash: String,
    /// This record's hash over everything above.
    pub hash: String,
    /// The spool's MAC over (node, epoch, seq, hash) under the keyring-derived key, if the
    /// node was unsealed when it wrote the record; kept in the merged log so that anyone
    /// unsealed can check it. Not part of the hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

fn digest(node: u64, epoch: &str, seq: u64, event: &AuditEvent, prev_hash: &str) -> String {
    // Canonical input: the event's JSON (struct field order is fixed) framed by node, epoch,
    // seq and the previous hash.
    let body = serde_json::to_vec(event).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(node.to_be_bytes());
    h.update((epoch.len() as u64).to_be_bytes());
    h.update(epoch.as_bytes());
    h.update(seq.to_be_bytes());
    h.update(prev_hash.as_bytes());
    h.update((body.len() as u64).to_be_bytes());
    h.update(&body);
    hex::encode(h.finalize())
}

/// Chains `event` after `prev_hash` as record `seq` of `node`'s spool epoch `epoch`.
pub fn chain(node: u64, epoch: &str, seq: u64, prev_hash: &str, event: AuditEvent) -> AuditRecord {
    let hash = digest(node, epoch, seq, &event, prev_hash);
    AuditRecord {
        node,
        epoch: epoch.to_string(),
        seq,
        event,
        prev_hash: prev_hash.to_string(),
        hash,
        mac: None,
    }
}

impl AuditRecord {
    /// Whether the stored hash matches the content.
    pub fn intact(&self) -> bool {
        digest(
            self.node,
            &self.epoch,
            self.seq,
            &self.event,
            &self.prev_hash,
        ) == self.hash
    }
}

/// What is wrong at one position of a chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainProblem {
    /// Origin node.
    pub node: u64,
    /// The epoch's number among the node's epochs (1 for its first spool).
    #[serde(default)]
    pub epoch: u32,
    /// Sequence number where the problem is seen.
    pub seq: u64,
    /// `gap`, `fork`, `tampered`, `truncated`, `unreadable`, or `deleted` (an archive segment
    /// this node wrote is gone).
    pub kind: String,
    /// Human explanation.
    pub detail: String,
}

/// Checks one node's records, in order, starting after `(seq, hash)` of what came before
/// (`(0, GENESIS)` for a whole chain).
pub fn verify_chain(node: u64, start: (u64, &str), records: &[AuditRecord]) -> Vec<ChainProblem> {
    let mut problems = Vec::new();
    let (mut prev_seq, mut prev_hash) = (start.0, start.1.to_string());
    let problem = |seq, kind: &str, detail: String| ChainProblem {
        node,
        epoch: 0,
        seq,
        kind: kind.into(),
        detail,
    };
    for r in records {
        if !r.intact() {
            problems.push(problem(
                r.seq,
                "tampered",
                format!("record {} does not match its hash", r.seq),
            ));
        }
        if r.seq != prev_seq + 1 {
            problems.push(problem(
                r.seq,
                "gap",
                format!(
                    "expected record {} after {}, found {}",
                    prev_seq + 1,
                    prev_seq,
                    r.seq
                ),
            ));
        } else if r.prev_hash != prev_hash {
            problems.push(problem(
                r.seq,
                "fork",
                format!("record {} does not link to record {}", r.seq, prev_seq),
            ));
        }
        prev_seq = r.seq;
        prev_hash = r.hash.clone();
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(path: &str) -> AuditEvent {
        AuditEvent {
            path: path.into(),
            operation: "read".into(),
            ..Default::default()
        }
    }

    fn build(n: u64) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for seq in 1..=n {
            let prev = out.last().map_or(GENESIS.to_string(), |r| r.hash.clone());
            out.push(chain(7, "e1", seq, &prev, ev(&format!("p{seq}"))));
        }
        out
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert!(verify_chain(7, (0, GENESIS), &build(5)).is_empty());
    }

    #[test]
    fn tamper_gap_and_fork_are_reported_with_positions() {
        let mut chain_ = build(5);
        chain_[2].event.path = "edited".into();
        let p = verify_chain(7, (0, GENESIS), &chain_);
        assert_eq!((p[0].seq, p[0].kind.as_str()), (3, "tampered"));

        let mut gap = build(5);
        gap.remove(1);
        let p = verify_chain(7, (0, GENESIS), &gap);
        assert_eq!((p[0].seq, p[0].kind.as_str()), (3, "gap"));

        let mut fork = build(3);
        let other = chain(7, "e1", 3, &"f".repeat(64), ev("other"));
        fork[2] = other;
        let p = verify_chain(7, (0, GENESIS), &fork);
        assert_eq!((p[0].seq, p[0].kind.as_str()), (3, "fork"));
    }
}

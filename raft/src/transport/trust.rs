//! Who may speak on the peer port, and for what.
//!
//! A certificate from the cluster CA proves only that the CA once issued it. Certificates
//! live long and are never revoked by the CA, so that alone would admit every pack ever made
//! and every node ever removed. A peer is trusted for a request only if its certificate is
//! **the** certificate the replicated membership pins for the node id it binds
//! ([`crate::NodeAddr::cert_sha256`]). The one exception is an application message
//! (`PeerRequest::App`), which the vault layer judges itself: that is how a pack's certificate
//! registers, once.
//!
//! A node that was never initialized (no membership at all) trusts the CA alone: it has
//! nothing to protect, and production nodes are never in that state with their peer port
//! open (see `Engine::peer_standing`).
//!
//! A node whose log lags (restarted after membership changes, or joined from an older pack)
//! may not yet know a member that now leads. When it refuses a Raft RPC for that reason it
//! asks the members it does trust for their view ([`Roster`]), and trusts the newest view
//! for a while. Asking only trusted members adds no trust: each could already send it
//! anything a leader can.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::types::{NodeAddr, NodeId};

/// How long a roster learned from other members is trusted without being refreshed.
pub const ROSTER_TTL: Duration = Duration::from_secs(60);
/// Least time between two roster refreshes (a refused stranger cannot make us ask often).
pub const ROSTER_REFRESH_INTERVAL: Duration = Duration::from_secs(2);
/// Least time between two log lines for the same refusal reason (every refusal is counted).
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The peer on the other end of a connection, as its verified certificate says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCaller {
    /// The node id bound in the certificate.
    pub node_id: NodeId,
    /// SHA-256 (hex) of the certificate.
    pub cert_sha256: String,
}

/// Why a peer, or one of its requests, was refused. Each is a label of
/// `coffer_peer_refusals_total{reason=…}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The TLS handshake failed: a certificate not from the cluster CA, expired, or none.
    Handshake,
    /// The certificate binds no node id (an API certificate, a foreign one).
    NoNodeId,
    /// A Raft message claims to come from another node than the certificate's.
    ClaimsOtherNode,
    /// The certificate's node id is not a member: a removed node, or a pack's certificate
    /// trying anything but its registration.
    NotMember,
    /// The node id is a member, but with another certificate: an old certificate of a node
    /// that was removed and joined again, or a copy of a pack's certificate.
    RevokedCertificate,
    /// The vault refused a registration (unknown, used or expired pack, wrong certificate).
    Registration,
}

impl Refusal {
    /// Every reason, in the order metrics list them.
    pub const ALL: [Refusal; 6] = [
        Refusal::Handshake,
        Refusal::NoNodeId,
        Refusal::ClaimsOtherNode,
        Refusal::NotMember,
        Refusal::RevokedCertificate,
        Refusal::Registration,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Handshake => "tls_handshake",
            Refusal::NoNodeId => "no_node_id",
            Refusal::ClaimsOtherNode => "claims_other_node",
            Refusal::NotMember => "not_member",
            Refusal::RevokedCertificate => "revoked_certificate",
            Refusal::Registration => "registration",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// Refusals counted since start, by reason.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Count per reason, indexed like [`Refusal::ALL`].
    counts: [AtomicU64; 6],
    /// When each reason was last logged.
    logged: Mutex<[Option<Instant>; 6]>,
}

impl Refusals {
    /// Counts a refusal and logs it: every one at `debug`, and at `warn` at most once a second
    /// per reason with the running total (a flood of refused attempts cannot flood the log).
    pub fn record(&self, reason: Refusal, peer: &str, why: &str) {
        let i = reason.index();
        let n = self.counts[i].fetch_add(1, Ordering::Relaxed) + 1;
        let log = self.logged.lock().map(|mut last| {
            let due = last[i].is_none_or(|t| t.elapsed() >= LOG_INTERVAL);
            if due {
                last[i] = Some(Instant::now());
            }
            due
        });
        if log.unwrap_or(true) {
            tracing::warn!(reason = reason.label(), %peer, total = n, "peer refused: {why}");
        } else {
            tracing::debug!(reason = reason.label(), %peer, total = n, "peer refused: {why}");
        }
    }

    /// `(label, count)` for every reason.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .map(|r| (r.label(), self.counts[r.index()].load(Ordering::Relaxed)))
            .collect()
    }
}

/// A membership view: the log index of the membership entry it comes from, and the members.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    /// Log index of the membership entry (0 if none).
    pub index: u64,
    /// Members with their pinned certificates.
    pub members: BTreeMap<NodeId, NodeAddr>,
}

impl Roster {
    /// Whether `caller` is a member with exactly this certificate.
    pub fn judge(&self, caller: &PeerCaller) -> Result<(), Refusal> {
        match self.members.get(&caller.node_id) {
            None => Err(Refusal::NotMember),
            Some(addr)
                if !addr.cert_sha256.is_empty() && addr.cert_sha256 == caller.cert_sha256 =>
            {
                Ok(())
            }
            Some(_) => Err(Refusal::RevokedCertificate),
        }
    }
}

/// Registration attempts one certificate may make per minute (a joining node retries every
/// few seconds; a stranger hammering the leader fills no disk with audit records).
pub const REGISTRATIONS_PER_MINUTE: u32 = 30;
/// The window [`REGISTRATIONS_PER_MINUTE`] counts in.
const REGISTRATION_WINDOW: Duration = Duration::from_secs(60);
/// Certificates tracked before expired windows are swept (bounds the map under a flood of
/// distinct certificates, each of which the CA had to issue).
const REGISTRATION_SWEEP_AT: usize = 10_000;

/// Counts registration attempts per certificate, per minute.
#[derive(Debug, Default)]
pub struct RegistrationLimiter {
    /// Fingerprint -> (window start, attempts in it).
    seen: Mutex<std::collections::HashMap<String, (Instant, u32)>>,
}

impl RegistrationLimiter {
    /// Whether `cert_sha256` may make one more attempt now (and counts it).
    pub fn allow(&self, cert_sha256: &str) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        let minute = REGISTRATION_WINDOW;
        if seen.len() > REGISTRATION_SWEEP_AT {
            seen.retain(|_, (start, _)| start.elapsed() < minute);
        }
        let entry = seen
            .entry(cert_sha256.to_string())
            .or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= minute {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        entry.1 <= REGISTRATIONS_PER_MINUTE
    }
}

/// A roster learned from other members, newer than the local one when it was learned.
#[derive(Debug, Default)]
pub(crate) struct LearnedRoster {
    /// The newest roster learned, and when.
    learned: Mutex<Option<(Roster, Instant)>>,
    /// When a refresh last started.
    last_refresh: Mutex<Option<Instant>>,
}

impl LearnedRoster {
    /// The learned roster if it is still fresh and newer than `local_index`.
    pub(crate) fn newer_than(&self, local_index: u64) -> Option<Roster> {
        let guard = self.learned.lock().ok()?;
        let (roster, at) = guard.as_ref()?;
        (roster.index > local_index && at.elapsed() < ROSTER_TTL).then(|| roster.clone())
    }

    /// Keeps `roster` if it is newer than what is known.
    pub(crate) fn offer(&self, roster: Roster) {
        if let Ok(mut guard) = self.learned.lock() {
            let newer = guard.as_ref().is_none_or(|(r, _)| roster.index >= r.index);
            if newer {
                *guard = Some((roster, Instant::now()));
            }
        }
    }

    /// Whether a refresh may start now (and marks it started).
    pub(crate) fn refresh_due(&self) -> bool {
        let Ok(mut last) = self.last_refresh.lock() else {
            return false;
        };
        if last.is_some_and(|t| t.elapsed() < ROSTER_REFRESH_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(pin: &str) -> NodeAddr {
        NodeAddr {
            api_addr: String::new(),
            peer_addr: String::new(),
            cert_sha256: pin.into(),
        }
    }

    fn caller(id: NodeId, pin: &str) -> PeerCaller {
        PeerCaller {
            node_id: id,
            cert_sha256: pin.into(),
        }
    }

    #[test]
    fn only_the_pinned_certificate_of_a_member_is_trusted() {
        let roster = Roster {
            index: 7,
            members: BTreeMap::from([(1, addr("aa")), (2, addr("bb")), (3, addr(""))]),
        };
        assert_eq!(roster.judge(&caller(1, "aa")), Ok(()));
        assert_eq!(
            roster.judge(&caller(2, "aa")),
            Err(Refusal::RevokedCertificate)
        );
        assert_eq!(roster.judge(&caller(4, "aa")), Err(Refusal::NotMember));
        assert_eq!(
            roster.judge(&caller(3, "")),
            Err(Refusal::RevokedCertificate),
            "a member without a pin trusts no certificate"
        );
    }

    #[test]
    fn a_learned_roster_counts_only_while_newer_and_fresh() {
        let learned = LearnedRoster::default();
        assert!(learned.newer_than(0).is_none());
        learned.offer(Roster {
            index: 10,
            members: BTreeMap::new(),
        });
        assert!(learned.newer_than(9).is_some());
        assert!(learned.newer_than(10).is_none(), "the local view caught up");
        learned.offer(Roster {
            index: 5,
            members: BTreeMap::new(),
        });
        assert_eq!(
            learned.newer_than(0).map(|r| r.index),
            Some(10),
            "older ignored"
        );
        assert!(learned.refresh_due());
        assert!(!learned.refresh_due(), "rate limited");
    }

    #[test]
    fn registrations_are_rate_limited_per_certificate() {
        let limiter = RegistrationLimiter::default();
        for _ in 0..REGISTRATIONS_PER_MINUTE {
            assert!(limiter.allow("aa"));
        }
        assert!(!limiter.allow("aa"));
        assert!(
            limiter.allow("bb"),
            "another certificate has its own budget"
        );
    }

    #[test]
    fn refusals_are_counted_by_reason() {
        let r = Refusals::default();
        r.record(Refusal::NotMember, "x", "test");
        r.record(Refusal::NotMember, "x", "test");
        r.record(Refusal::Handshake, "x", "test");
        let snap: BTreeMap<_, _> = r.snapshot().into_iter().collect();
        assert_eq!(snap["not_member"], 2);
        assert_eq!(snap["tls_handshake"], 1);
        assert_eq!(snap["revoked_certificate"], 0);
    }
}

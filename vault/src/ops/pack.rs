//! Making bootstrap packs: on any unsealed node, for a node id, its addresses and its role;
//! recorded as pending in the replicated state until the new node registers with it (see
//! [`super::join`]). The file format itself is [`crate::rules::pack`].

use coffer_raft::Txn;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::auth::Auth;
use super::{Sealing, Vault};
use crate::error::{Result, VaultError};
use crate::rules::pack::{seal_pack_to, PackContents, PackMember, SEGMENT_BYTES};
use crate::rules::policy::Capability;

/// Shortest pack validity (one second: a pack can be made to expire at once, to rehearse).
pub const PACK_TTL_MIN_SECS: u64 = 1;
/// Longest pack validity: 30 days.
pub const PACK_TTL_MAX_SECS: u64 = 30 * 24 * 3600;
/// Default pack validity: 24 h.
pub const PACK_TTL_DEFAULT_SECS: u64 = 24 * 3600;

/// What `operator pack create` asks for.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackRequest {
    /// The new node's id.
    pub node_id: u64,
    /// Its HTTPS API address (`https://host:port`).
    pub api_addr: String,
    /// Its peer address (`host:port`).
    pub peer_addr: String,
    /// Promote it to voter once caught up.
    #[serde(default)]
    pub voter: bool,
    /// Put the root key in the pack so the node unseals itself (a key-file seal).
    #[serde(default)]
    pub include_unseal_key: bool,
    /// Validity in seconds (default 24 h).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// The passphrase to encrypt the pack under. Never logged or audited.
    pub passphrase: String,
}

impl std::fmt::Debug for PackRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackRequest")
            .field("node_id", &self.node_id)
            .field("voter", &self.voter)
            .finish_non_exhaustive()
    }
}

/// What was made (the pack bytes go to the caller separately).
#[derive(Clone, Debug, Serialize)]
pub struct PackSummary {
    /// The pack's id.
    pub pack_id: String,
    /// The node it admits.
    pub node_id: u64,
    /// Whether it will be promoted to voter.
    pub voter: bool,
    /// RFC 3339 expiry.
    pub expires_at: String,
    /// Size of the snapshot inside, bytes.
    pub snapshot_bytes: u64,
}

/// A pack as the cluster remembers it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct PackRecord {
    pub(super) node_id: u64,
    pub(super) voter: bool,
    pub(super) api_addr: String,
    pub(super) peer_addr: String,
    pub(super) created_at: u64,
    pub(super) expires_at: u64,
    /// SHA-256 of the pack's registration certificate: the only one that may register.
    pub(super) pack_cert_sha256: String,
    /// Set when a node registered with it.
    pub(super) used: Option<PackUse>,
}

/// Who consumed a pack.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct PackUse {
    /// Unix seconds.
    pub(super) at: u64,
    /// The join attempt (random per `operator join`), so the same joining node may repeat
    /// its registration while a second copy of the pack is refused.
    pub(super) instance: String,
    /// The member certificate issued for the node's own key, PEM (public; a repeated
    /// registration gets the same one back).
    pub(super) member_cert_pem: String,
    /// SHA-256 of `member_cert_pem`.
    pub(super) member_cert_sha256: String,
    /// Whether the node was added to the membership. After that the pack never adds it
    /// again: a node removed later joins again only from a new pack.
    pub(super) added: bool,
}

use crate::keys::pack as pack_key;

pub(super) fn unix_now() -> u64 {
    u64::try_from(crate::clock::now().unix_timestamp()).unwrap_or(0)
}

pub(super) fn host_of(addr: &str) -> &str {
    let hostport = addr.strip_prefix("https://").unwrap_or(addr);
    let hostport = hostport.trim_end_matches('/');
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

pub(super) fn check_addr(field: &str, value: &str, https: bool) -> Result<()> {
    let rest = if https {
        value.strip_prefix("https://").ok_or_else(|| {
            VaultError::InvalidRequest(format!("{field}: {value:?} must start with https://"))
        })?
    } else {
        value
    };
    let ok = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(VaultError::InvalidRequest(format!(
            "{field}: {value:?} needs a host and a non-zero port"
        )))
    }
}

impl Vault {
    /// Makes a bootstrap pack for a new node: issues its certificates from the cluster CA,
    /// records the pack as pending, and returns the encrypted file with a summary.
    pub async fn create_pack(
        &self,
        auth: &Auth,
        req: PackRequest,
        out: &mut std::fs::File,
    ) -> Result<PackSummary> {
        auth.require_sudo("sys/coffer/packs", Capability::Update)?;
        if self.restore_marker()?.is_some() {
            return Err(VaultError::Unavailable(
                "this node was restored and is finishing it (its new CA is not in place yet): \
                 try again in a moment"
                    .into(),
            ));
        }
        if req.include_unseal_key && !auth.is_root() {
            return Err(VaultError::Forbidden(
                "a pack with the unseal key hands out the root key: only a root token may make one"
                    .into(),
            ));
        }
        if req.node_id == 0 {
            return Err(VaultError::InvalidRequest(
                "node_id: must be at least 1".into(),
            ));
        }
        check_addr("api_addr", &req.api_addr, true)?;
        check_addr("peer_addr", &req.peer_addr, false)?;
        if req.passphrase.chars().count() < 12 {
            return Err(VaultError::InvalidRequest(
                "passphrase: at least 12 characters".into(),
            ));
        }
        let ttl = req.ttl_secs.unwrap_or(PACK_TTL_DEFAULT_SECS);
        if !(PACK_TTL_MIN_SECS..=PACK_TTL_MAX_SECS).contains(&ttl) {
            return Err(VaultError::InvalidRequest(format!(
                "ttl: must be between {PACK_TTL_MIN_SECS} s and {PACK_TTL_MAX_SECS} s"
            )));
        }
        let members = self.engine.member_addrs();
        if let Some(addr) = members.get(&req.node_id) {
            return Err(VaultError::InvalidRequest(format!(
                "node_id: node {} is already a member ({addr}); remove it first",
                req.node_id
            )));
        }
        let config = self
            .seal_config()?
            .ok_or_else(|| VaultError::InvalidRequest("the vault is not initialized".into()))?;
        let stored = self.cluster_ca()?.ok_or_else(|| {
            VaultError::Internal("the cluster CA key is not in the replicated state".into())
        })?;
        let ca = coffer_tls::CertificateAuthority::from_pem(&stored.cert_pem, &stored.key_pem)
            .map_err(VaultError::internal)?;
        let peer_host = host_of(&req.peer_addr).to_string();
        let api_host = host_of(&req.api_addr).to_string();
        // The pack's certificate only registers: the member certificate is issued then, for
        // a key the node makes itself (see `register_join_inner`).
        let node_cert = ca
            .issue_node(req.node_id, &[peer_host])
            .map_err(VaultError::internal)?;
        let pack_cert_sha256 =
            coffer_tls::fingerprint_pem(&node_cert.cert_pem).map_err(VaultError::internal)?;
        let mut api_hosts = vec![api_host, "localhost".to_string()];
        api_hosts.dedup();
        let api_cert = ca.issue_server(&api_hosts).map_err(VaultError::internal)?;

        let pack_id = {
            let mut id = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
            hex::encode(id)
        };
        let created_at = unix_now();
        let record = PackRecord {
            node_id: req.node_id,
            voter: req.voter,
            api_addr: req.api_addr.clone(),
            peer_addr: req.peer_addr.clone(),
            created_at,
            expires_at: created_at + ttl,
            pack_cert_sha256,
            used: None,
        };
        let key = pack_key(&pack_id);
        let sealed = self.seal_record(&key, &record)?;
        let txn = Txn::new().unchanged(key.clone(), None).put(key, sealed);
        if !self.engine.write(txn).await?.succeeded {
            return Err(VaultError::internal("pack id collision"));
        }
        let unseal_key_hex = if req.include_unseal_key {
            match &*self.sealing.read().map_err(VaultError::internal)? {
                Sealing::Unsealed { root, .. } => Some(hex::encode(root.expose())),
                Sealing::Sealed(_) => return Err(VaultError::Sealed),
            }
        } else {
            None
        };
        let mut snapshot = self.engine.snapshot_file().await?;
        let contents = PackContents {
            pack_id: pack_id.clone(),
            cluster_id: config.cluster_id.clone(),
            cluster_name: config.cluster_name.clone(),
            created_at,
            expires_at: record.expires_at,
            node_id: req.node_id,
            voter: req.voter,
            api_addr: req.api_addr.clone(),
            peer_addr: req.peer_addr.clone(),
            ca_cert_pem: stored.cert_pem.clone(),
            node_cert_pem: node_cert.cert_pem.clone(),
            node_key_pem: node_cert.key_pem.to_string(),
            api_cert_pem: api_cert.cert_pem.clone(),
            api_key_pem: api_cert.key_pem.to_string(),
            members: members
                .iter()
                .map(|(id, a)| PackMember {
                    id: *id,
                    api_addr: a.api_addr.clone(),
                    peer_addr: a.peer_addr.clone(),
                    cert_sha256: a.cert_sha256.clone(),
                })
                .collect(),
            unseal_key_hex,
            snapshot: Vec::new(),
        };
        let snapshot_bytes = snapshot.metadata().map_err(VaultError::internal)?.len();
        let passphrase = Zeroizing::new(req.passphrase.clone());
        let mut out = out.try_clone().map_err(VaultError::internal)?;
        tokio::task::spawn_blocking(move || {
            let mut writer = std::io::BufWriter::with_capacity(SEGMENT_BYTES, &mut out);
            seal_pack_to(&contents, &mut snapshot, &passphrase, &mut writer)
        })
        .await
        .map_err(VaultError::internal)?
        .map_err(VaultError::internal)?;
        tracing::info!(
            node = req.node_id,
            voter = req.voter,
            "bootstrap pack created"
        );
        Ok(PackSummary {
            pack_id,
            node_id: req.node_id,
            voter: req.voter,
            expires_at: crate::clock::rfc3339(
                time::OffsetDateTime::from_unix_timestamp(record.expires_at as i64)
                    .unwrap_or_else(|_| crate::clock::now()),
            ),
            snapshot_bytes,
        })
    }
}

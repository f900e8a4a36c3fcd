//! Init, unseal, seal, rotate: the lifecycle of the root key and the keyring.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::Engine as _;
use coffer_raft::{Check, Txn};

use super::records::seal_json;
use super::shapes::{HealthInfo, InitRequest, InitResponse, KeyStatus, SealStatus};
use super::{Auth, Sealing, Vault};
use crate::clock;
use crate::crypto::keyring::{Keyring, KEYRING_STORAGE_KEY};
use crate::crypto::Key;
use crate::error::{Result, VaultError};
use crate::rules::mount::{default_table, MOUNTS_KEY};
use crate::rules::policy::Capability;
use crate::rules::seal::{decode_share, init_material, SealConfig, ShareOutcome, SEAL_CONFIG_KEY};
use crate::rules::token::{accessor_key, generate_accessor, generate_token, token_key, TokenEntry};

/// Storage key of the cluster CA (certificate and key, encrypted).
pub const CA_KEY: &[u8] = crate::keys::CA;

/// The cluster CA as kept in the replicated state.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct StoredCa {
    /// CA certificate, PEM.
    pub cert_pem: String,
    /// CA private key, PEM.
    pub key_pem: String,
}

impl Drop for StoredCa {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key_pem);
    }
}

/// The Vault version whose API Coffer answers as: `version` in `sys/seal-status` and
/// `sys/health`. Tools gate features on it (Terraform's Vault provider, the CLI); Coffer's
/// KV v2, token, userpass and `sys` routes follow Vault 1.15's shapes. Coffer's own version
/// is [`COFFER_VERSION`], in `coffer_version`.
pub const VAULT_API_VERSION: &str = "1.15.0";

/// Coffer's own version (`coffer_version` in `sys/seal-status` and `sys/health`).
pub const COFFER_VERSION: &str = env!("CARGO_PKG_VERSION");

impl Vault {
    /// The seal configuration, if the vault is initialized.
    pub fn seal_config(&self) -> Result<Option<SealConfig>> {
        let Some(entry) = self.engine.get(SEAL_CONFIG_KEY)? else {
            return Ok(None);
        };
        serde_json::from_slice(&entry.value)
            .map(Some)
            .map_err(VaultError::internal)
    }

    /// Whether `sys/init` has run.
    pub fn is_initialized(&self) -> Result<bool> {
        Ok(self.seal_config()?.is_some())
    }

    /// Whether this node is sealed.
    pub fn is_sealed(&self) -> bool {
        !matches!(self.sealing.read().as_deref(), Ok(Sealing::Unsealed { .. }))
    }

    /// `sys/init`: creates the root key, its shares, the keyring, the mount table and the root
    /// token, in one transaction guarded on "not yet initialized". The node stays sealed.
    /// `ca` (the cluster CA the node generated before init) moves into the encrypted state.
    pub async fn init(
        &self,
        req: InitRequest,
        ca: Option<&StoredCa>,
    ) -> Result<(InitResponse, Key)> {
        if self.is_initialized()? {
            return Err(VaultError::AlreadyInitialized);
        }
        let material = init_material(
            req.secret_shares,
            req.secret_threshold,
            &self.node.cluster_name,
        )
        .map_err(|e| VaultError::InvalidRequest(e.to_string()))?;
        let now = clock::now();
        let keyring = Arc::new(Keyring::new(clock::rfc3339(now)));
        let root_token = req.root_token_id.clone().unwrap_or_else(generate_token);
        let token = TokenEntry {
            accessor: generate_accessor(),
            policies: vec!["root".into()],
            display_name: "root".into(),
            path: "auth/token/root".into(),
            creation_time: now.unix_timestamp(),
            creation_ttl: 0,
            expire_time: None,
            meta: Default::default(),
            renewable: false,
            parent: None,
            explicit_max_ttl: 0,
            period: 0,
            owner: "root".into(),
            owner_method: "token".into(),
            depth: 0,
        };
        let tk = token_key(&root_token);
        let mut txn = Txn::new()
            .when(SEAL_CONFIG_KEY, Check::Absent)
            .put(
                SEAL_CONFIG_KEY,
                serde_json::to_vec(&material.config).map_err(VaultError::internal)?,
            )
            .put(KEYRING_STORAGE_KEY, keyring.wrap(&material.root))
            .put(
                MOUNTS_KEY,
                seal_json(&keyring, MOUNTS_KEY, &default_table())?,
            )
            .put(tk.clone(), seal_json(&keyring, &tk, &token)?)
            .put(
                accessor_key(&token.accessor),
                seal_json(&keyring, &accessor_key(&token.accessor), &hex::encode(&tk))?,
            );
        if let Some(ca) = ca {
            txn = txn.put(CA_KEY, seal_json(&keyring, CA_KEY, ca)?);
        }
        let spool_key = crate::audit::SpoolKey::generate();
        let spool_secret = zeroize::Zeroizing::new(hex::encode(*spool_key.to_bytes()));
        txn = txn
            .put(crate::keys::SPOOL_PUBLIC_KEY, spool_key.public().to_vec())
            .put(
                crate::keys::SPOOL_SECRET_KEY,
                seal_json(&keyring, crate::keys::SPOOL_SECRET_KEY, &*spool_secret)?,
            );
        if !self.engine.write(txn).await?.succeeded {
            return Err(VaultError::AlreadyInitialized);
        }
        self.spool.set_recipient(spool_key.public());
        tracing::info!(
            shares = req.secret_shares,
            threshold = req.secret_threshold,
            "vault initialized"
        );
        let response = InitResponse {
            keys: material.shares.iter().map(hex::encode).collect(),
            keys_base64: material
                .shares
                .iter()
                .map(|s| base64::engine::general_purpose::STANDARD.encode(s))
                .collect(),
            root_token,
        };
        Ok((response, material.root))
    }

    /// Unseals directly with the root key (key-file seal, dev mode).
    pub fn unseal_with_root(&self, root: Key) -> Result<()> {
        let wrapped = self
            .engine
            .get(KEYRING_STORAGE_KEY)?
            .ok_or(VaultError::NotInitialized)?;
        let keyring = Keyring::unwrap(&root, &wrapped.value).map_err(|_| {
            self.unseal_failures.fetch_add(1, Ordering::Relaxed);
            VaultError::BadUnsealKey(
                "unseal failed: the key does not open this vault's keyring".into(),
            )
        })?;
        self.check_restored_backup(&keyring)?;
        self.spool.set_mac_key(Some(Vault::spool_mac_key(&keyring)));
        *self.sealing.write().map_err(VaultError::internal)? = Sealing::Unsealed {
            root,
            keyring: Arc::new(keyring),
        };
        tracing::info!("vault unsealed");
        Ok(())
    }

    /// `sys/unseal`: enters one share (or resets progress). Returns the seal status after.
    pub fn unseal(&self, key: Option<&str>, reset: bool) -> Result<SealStatus> {
        let config = self.seal_config()?.ok_or(VaultError::NotInitialized)?;
        if reset {
            if let Sealing::Sealed(progress) =
                &mut *self.sealing.write().map_err(VaultError::internal)?
            {
                progress.reset();
            }
            return self.seal_status();
        }
        if !self.is_sealed() {
            return self.seal_status();
        }
        let key = key
            .ok_or_else(|| VaultError::InvalidRequest("missing required 'key' parameter".into()))?;
        let refuse = |msg: String| {
            self.unseal_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("unseal share refused: {msg}");
            VaultError::BadUnsealKey(msg)
        };
        let share = decode_share(key)
            .ok_or_else(|| refuse("invalid unseal key: not hex or base64".into()))?;
        let root = {
            let mut guard = self.sealing.write().map_err(VaultError::internal)?;
            let Sealing::Sealed(progress) = &mut *guard else {
                return self.seal_status_locked(&guard, &config);
            };
            match progress.add(&config, share).map_err(refuse)? {
                ShareOutcome::Progress(_) | ShareOutcome::Duplicate(_) => None,
                ShareOutcome::Complete => Some(progress.take_root().map_err(refuse)?),
            }
        };
        if let Some(root) = root {
            self.unseal_with_root(root)?;
        }
        self.seal_status()
    }

    /// `sys/seal`: forgets the root key and keyring.
    pub fn seal(&self, auth: &Auth) -> Result<()> {
        auth.require_sudo("sys/seal", Capability::Update)?;
        *self.sealing.write().map_err(VaultError::internal)? = Sealing::Sealed(Default::default());
        self.spool.set_mac_key(None);
        tracing::info!("vault sealed");
        Ok(())
    }

    /// `sys/seal-status`.
    pub fn seal_status(&self) -> Result<SealStatus> {
        let config = self.seal_config()?;
        let guard = self.sealing.read().map_err(VaultError::internal)?;
        match config {
            Some(config) => self.seal_status_locked(&guard, &config),
            None => Ok(self.status_shape(None, true, 0)),
        }
    }

    fn seal_status_locked(&self, sealing: &Sealing, config: &SealConfig) -> Result<SealStatus> {
        let (sealed, progress) = match sealing {
            Sealing::Sealed(p) => (true, p.len()),
            Sealing::Unsealed { .. } => (false, 0),
        };
        Ok(self.status_shape(Some(config), sealed, progress))
    }

    fn status_shape(
        &self,
        config: Option<&SealConfig>,
        sealed: bool,
        progress: usize,
    ) -> SealStatus {
        let unsealed_config = config.filter(|_| !sealed);
        SealStatus {
            kind: "shamir".into(),
            initialized: config.is_some(),
            sealed,
            t: config.map_or(0, |c| c.secret_threshold),
            n: config.map_or(0, |c| c.secret_shares),
            progress,
            nonce: String::new(),
            version: VAULT_API_VERSION.into(),
            coffer_version: COFFER_VERSION.into(),
            build_date: String::new(),
            migration: false,
            cluster_name: unsealed_config.map(|c| c.cluster_name.clone()),
            cluster_id: unsealed_config.map(|c| c.cluster_id.clone()),
            recovery_seal: false,
            storage_type: "raft".into(),
            unseal_failures: self.unseal_failures.load(Ordering::Relaxed),
        }
    }

    /// Facts for `sys/health`.
    pub fn health(&self) -> Result<HealthInfo> {
        let config = self.seal_config()?;
        let sealed = self.is_sealed();
        let known = config.as_ref().filter(|_| !sealed);
        Ok(HealthInfo {
            initialized: config.is_some(),
            sealed,
            standby: !self.engine.is_leader(),
            performance_standby: false,
            replication_performance_mode: "disabled".into(),
            replication_dr_mode: "disabled".into(),
            server_time_utc: clock::now().unix_timestamp(),
            version: VAULT_API_VERSION.into(),
            coffer_version: COFFER_VERSION.into(),
            cluster_name: known.map(|c| c.cluster_name.clone()),
            cluster_id: known.map(|c| c.cluster_id.clone()),
            applied_index: self.engine.applied_index(),
            read_only: self.engine.mode() == coffer_raft::NodeMode::ReadOnly,
            last_contact_ms: self.engine.contact_age_ms(),
            audit_spool_error: self.spool().failure(),
            audit_spool_backlog: self.audit_backlog(),
            last_backup: self.backup_record(),
        })
    }

    /// `sys/rotate`: adds a keyring term; new writes use it, old terms still decrypt.
    pub async fn rotate(&self, auth: &Auth) -> Result<KeyStatus> {
        auth.require_sudo("sys/rotate", Capability::Update)?;
        let term = self
            .transact(|| {
                let current = self
                    .engine
                    .get(KEYRING_STORAGE_KEY)?
                    .ok_or(VaultError::NotInitialized)?;
                let guard = self.sealing.read().map_err(VaultError::internal)?;
                let Sealing::Unsealed { root, .. } = &*guard else {
                    return Err(VaultError::Sealed);
                };
                let mut ring =
                    Keyring::unwrap(root, &current.value).map_err(VaultError::internal)?;
                let term = ring.rotate(clock::rfc3339(clock::now()));
                let txn = Txn::new()
                    .unchanged(KEYRING_STORAGE_KEY, Some(&current))
                    .put(KEYRING_STORAGE_KEY, ring.wrap(root));
                Ok((txn, term))
            })
            .await?;
        self.refresh_keyring()?;
        tracing::info!(term, "keyring rotated");
        self.key_status(auth)
    }

    /// `sys/key-status`.
    pub fn key_status(&self, auth: &Auth) -> Result<KeyStatus> {
        auth.require("sys/key-status", Capability::Read)?;
        let ring = self.keyring()?;
        let (term, key) = ring.active();
        Ok(KeyStatus {
            term,
            install_time: key.install_time.clone(),
        })
    }

    /// The cluster CA from the encrypted state (unsealed nodes only).
    pub fn cluster_ca(&self) -> Result<Option<StoredCa>> {
        Ok(self.read_record::<StoredCa>(CA_KEY)?.map(|r| r.value))
    }
}

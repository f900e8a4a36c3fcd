//! Encrypted records: JSON sealed in the AES-256-GCM envelope under the keyring, bound to its
//! storage key; and the read-modify-write loop that turns a change into a guarded transaction.

use std::sync::Arc;

use coffer_raft::{KvEntry, Txn};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Sealing, Vault};
use crate::crypto::envelope::EnvelopeError;
use crate::crypto::keyring::{Keyring, KEYRING_STORAGE_KEY};
use crate::error::{Result, VaultError};

/// How often a transaction is rebuilt after losing a race before giving up.
const MAX_TXN_ATTEMPTS: usize = 32;

/// A decrypted record and the entry it came from (for revision guards).
pub(crate) struct Record<T> {
    /// The decoded value.
    pub value: T,
    /// The raw stored entry: its `mod_revision` guards the next write.
    pub entry: KvEntry,
}

/// Encrypts a JSON record for `key` under `ring`'s active term (also used by `init`, before
/// the node holds an unsealed keyring).
pub(crate) fn seal_json<T: Serialize>(ring: &Keyring, key: &[u8], value: &T) -> Result<Vec<u8>> {
    let json = zeroize::Zeroizing::new(serde_json::to_vec(value).map_err(VaultError::internal)?);
    Ok(ring.seal(key, &json))
}

impl Vault {
    /// The current keyring, or `Sealed`.
    pub(crate) fn keyring(&self) -> Result<Arc<Keyring>> {
        match &*self.sealing.read().map_err(VaultError::internal)? {
            Sealing::Unsealed { keyring, .. } => Ok(keyring.clone()),
            Sealing::Sealed(_) => Err(VaultError::Sealed),
        }
    }

    /// Re-reads the wrapped keyring (another node rotated) and installs it.
    pub(crate) fn refresh_keyring(&self) -> Result<Arc<Keyring>> {
        let wrapped = self
            .engine
            .get(KEYRING_STORAGE_KEY)?
            .ok_or_else(|| VaultError::internal("keyring missing from storage"))?;
        let mut guard = self.sealing.write().map_err(VaultError::internal)?;
        match &mut *guard {
            Sealing::Unsealed { root, keyring } => {
                let fresh =
                    Arc::new(Keyring::unwrap(root, &wrapped.value).map_err(VaultError::internal)?);
                *keyring = fresh.clone();
                Ok(fresh)
            }
            Sealing::Sealed(_) => Err(VaultError::Sealed),
        }
    }

    /// Decrypts the envelope stored under `key`.
    pub(crate) fn open_bytes(
        &self,
        key: &[u8],
        envelope: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        let ring = self.keyring()?;
        match ring.open(key, envelope) {
            Ok(pt) => Ok(pt),
            Err(EnvelopeError::UnknownTerm(_)) => self
                .refresh_keyring()?
                .open(key, envelope)
                .map_err(|e| self.integrity_error(key, e)),
            Err(e) => Err(self.integrity_error(key, e)),
        }
    }

    fn integrity_error(&self, key: &[u8], e: EnvelopeError) -> VaultError {
        VaultError::Internal(format!(
            "record at {:?} failed to decrypt: {e}",
            String::from_utf8_lossy(key)
        ))
    }

    /// Reads and decrypts a JSON record.
    /// A sealed node refuses even reads of absent keys: whether a path exists is data too.
    pub(crate) fn read_record<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<Record<T>>> {
        self.keyring()?;
        let Some(entry) = self.engine.get(key)? else {
            return Ok(None);
        };
        let plaintext = self.open_bytes(key, &entry.value)?;
        let value = serde_json::from_slice(&plaintext).map_err(VaultError::internal)?;
        Ok(Some(Record { value, entry }))
    }

    /// Encrypts a JSON record for `key` under the active term.
    pub(crate) fn seal_record<T: Serialize>(&self, key: &[u8], value: &T) -> Result<Vec<u8>> {
        seal_json(&*self.keyring()?, key, value)
    }

    /// Runs `build` (which reads current state and returns a guarded transaction plus the
    /// value to return) until its transaction commits with every guard holding.
    pub(crate) async fn transact<R>(
        &self,
        mut build: impl FnMut() -> Result<(Txn, R)>,
    ) -> Result<R> {
        for _ in 0..MAX_TXN_ATTEMPTS {
            let (txn, out) = build()?;
            if self.engine.write(txn).await?.succeeded {
                return Ok(out);
            }
        }
        Err(VaultError::Unavailable(
            "too much contention on this path; retry later".into(),
        ))
    }
}

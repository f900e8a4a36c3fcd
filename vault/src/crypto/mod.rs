//! Key material and what is done with it: the AES-256-GCM envelope, the data-key keyring, and
//! Shamir's secret sharing of the root key. Pure functions; nothing here touches a disk.

pub mod envelope;
pub mod keyring;
pub mod shamir;

use zeroize::Zeroizing;

/// A 256-bit key, zeroized on drop and never printed.
#[derive(Clone)]
pub struct Key(pub(crate) Zeroizing<[u8; 32]>);

impl Key {
    /// A fresh random key from the OS generator.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, bytes.as_mut());
        Self(bytes)
    }

    /// Wraps raw bytes; `None` unless exactly 32.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(Self(Zeroizing::new(arr)))
    }

    /// The raw bytes. Callers must not copy them anywhere that is not zeroized.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

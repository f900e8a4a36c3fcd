//! The data-key keyring: term -> 256-bit key. New data is sealed under the active (highest)
//! term; older terms stay to open what they sealed. The serialized keyring is itself sealed
//! under the root key and kept in the replicated state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::envelope::{self, EnvelopeError};
use super::Key;

/// Storage key of the wrapped keyring, also its associated data.
pub const KEYRING_STORAGE_KEY: &[u8] = crate::keys::KEYRING;

/// One installed data key.
#[derive(Clone)]
pub struct TermKey {
    /// The key.
    pub key: Key,
    /// When it was installed, RFC 3339 (reported by `sys/key-status`).
    pub install_time: String,
}

/// The keyring. Never `Debug`-printed with key bytes.
#[derive(Clone)]
pub struct Keyring {
    /// Every term ever installed.
    terms: BTreeMap<u32, TermKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("terms", &self.terms.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Serialized form; the key bytes are hex in a zeroized buffer.
#[derive(Serialize, Deserialize)]
struct WireTerm {
    term: u32,
    key_hex: String,
    install_time: String,
}

impl Keyring {
    /// A keyring with a single fresh key at term 1.
    pub fn new(install_time: String) -> Self {
        let terms = BTreeMap::from([(
            1,
            TermKey {
                key: Key::generate(),
                install_time,
            },
        )]);
        Self { terms }
    }

    /// The active term and its key.
    pub fn active(&self) -> (u32, &TermKey) {
        let (term, key) = self
            .terms
            .iter()
            .next_back()
            .expect("a keyring always holds at least one term");
        (*term, key)
    }

    /// Adds a new term with a fresh key and returns it.
    pub fn rotate(&mut self, install_time: String) -> u32 {
        let term = self.active().0 + 1;
        self.terms.insert(
            term,
            TermKey {
                key: Key::generate(),
                install_time,
            },
        );
        term
    }

    /// Seals `plaintext` under the active term.
    pub fn seal(&self, storage_key: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let (term, key) = self.active();
        envelope::seal(term, &key.key, storage_key, plaintext)
    }

    /// Opens an envelope sealed under any term of this keyring.
    pub fn open(
        &self,
        storage_key: &[u8],
        env: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let term = envelope::term_of(env)?;
        let key = self
            .terms
            .get(&term)
            .ok_or(EnvelopeError::UnknownTerm(term))?;
        envelope::open(&key.key, storage_key, env)
    }

    /// The keyring sealed under the root key, ready to store at [`KEYRING_STORAGE_KEY`].
    pub fn wrap(&self, root: &Key) -> Vec<u8> {
        let wire: Vec<WireTerm> = self
            .terms
            .iter()
            .map(|(term, k)| WireTerm {
                term: *term,
                key_hex: hex::encode(k.key.expose()),
                install_time: k.install_time.clone(),
            })
            .collect();
        let json = Zeroizing::new(serde_json::to_vec(&wire).expect("keyring serializes"));
        for w in wire {
            drop(Zeroizing::new(w.key_hex));
        }
        envelope::seal(0, root, KEYRING_STORAGE_KEY, &json)
    }

    /// Opens a wrapped keyring with the root key. Fails with `Unauthentic` for a wrong root
    /// key, which is how a wrong set of unseal shares is detected.
    pub fn unwrap(root: &Key, wrapped: &[u8]) -> Result<Self, EnvelopeError> {
        let json = envelope::open(root, KEYRING_STORAGE_KEY, wrapped)?;
        let wire: Vec<WireTerm> =
            serde_json::from_slice(&json).map_err(|_| EnvelopeError::Malformed)?;
        let mut terms = BTreeMap::new();
        for w in wire {
            let bytes =
                Zeroizing::new(hex::decode(&w.key_hex).map_err(|_| EnvelopeError::Malformed)?);
            drop(Zeroizing::new(w.key_hex));
            let key = Key::from_slice(&bytes).ok_or(EnvelopeError::Malformed)?;
            terms.insert(
                w.term,
                TermKey {
                    key,
                    install_time: w.install_time,
                },
            );
        }
        if terms.is_empty() {
            return Err(EnvelopeError::Malformed);
        }
        Ok(Self { terms })
    }

    /// Whether every term of `other` is a term of this keyring with the same key, so that
    /// whatever was sealed under `other` opens under this one.
    pub fn covers(&self, other: &Keyring) -> bool {
        other.terms.iter().all(|(term, theirs)| {
            self.terms
                .get(term)
                .is_some_and(|mine| mine.key.expose() == theirs.key.expose())
        })
    }

    /// A subkey for `purpose`, derived from the first term's key (stable across rotations and
    /// identical on every node): HMAC-SHA256(first key, purpose).
    pub fn derive(&self, purpose: &[u8]) -> Key {
        use hmac::Mac;
        let (_, first) = self
            .terms
            .iter()
            .next()
            .expect("a keyring always holds at least one term");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(first.key.expose())
            .expect("HMAC takes any key length");
        mac.update(purpose);
        let out: [u8; 32] = mac.finalize().into_bytes().into();
        Key(Zeroizing::new(out))
    }

    /// Terms and install times, for `sys/key-status`.
    pub fn terms(&self) -> impl Iterator<Item = (u32, &str)> {
        self.terms
            .iter()
            .map(|(t, k)| (*t, k.install_time.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_terms_still_open_after_rotation() {
        let mut ring = Keyring::new("t0".into());
        let old = ring.seal(b"k", b"v1");
        assert_eq!(ring.rotate("t1".into()), 2);
        let new = ring.seal(b"k", b"v2");
        assert_eq!(envelope::term_of(&new), Ok(2));
        assert_eq!(ring.open(b"k", &old).unwrap().as_slice(), b"v1");
        assert_eq!(ring.open(b"k", &new).unwrap().as_slice(), b"v2");
    }

    #[test]
    fn wrap_unwrap_and_wrong_root() {
        let root = Key::generate();
        let ring = Keyring::new("t0".into());
        let wrapped = ring.wrap(&root);
        let back = Keyring::unwrap(&root, &wrapped).unwrap();
        let env = ring.seal(b"k", b"v");
        assert_eq!(back.open(b"k", &env).unwrap().as_slice(), b"v");
        assert!(matches!(
            Keyring::unwrap(&Key::generate(), &wrapped),
            Err(EnvelopeError::Unauthentic)
        ));
    }

    #[test]
    fn unknown_term_is_reported() {
        let mut newer = Keyring::new("t".into());
        newer.rotate("t".into());
        let env = newer.seal(b"k", b"v");
        let older = Keyring::new("t".into());
        assert_eq!(older.open(b"k", &env), Err(EnvelopeError::UnknownTerm(2)));
    }
}

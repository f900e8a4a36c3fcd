//! The storage layout: every key the vault writes, in one place.

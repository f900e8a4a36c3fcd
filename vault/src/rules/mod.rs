//! The product's rules as pure functions: no storage, no clock, no I/O. The facade's
//! operations (`ops/`, one module of the same name per concern) apply them.

pub mod backup;
pub mod kv;
pub mod mount;
pub mod pack;
pub mod policy;
pub mod ratelimit;
pub mod seal;
pub mod token;

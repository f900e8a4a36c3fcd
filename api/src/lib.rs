//! Coffer's HTTPS API (axum over rustls, Vault-compatible routes), the Rust client, the server
//! start-up, and the `coffer` CLI. Product rules live in `coffer-vault`; this crate only knows
//! HTTP and how to map the vault's answers onto it.

pub mod cli;
pub mod client;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod https;
pub mod routes;
pub mod sd_notify;
pub mod server;
pub mod server_logging;

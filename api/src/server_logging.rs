//! Log set-up for the server: `tracing` to stderr, text or JSON, filtered by `log_level`.

use crate::config::ServerConfig;

/// Installs the global subscriber. Logs carry paths and statuses, never bodies or tokens.
pub fn init(cfg: &ServerConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive("openraft=warn".parse().expect("static directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log_format == "json" {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

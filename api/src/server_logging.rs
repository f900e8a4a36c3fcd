//! Log set-up for the server: `tracing` to stderr, text or JSON, filtered by `log_level`.

use crate::config::ServerConfig;

/// Installs the global subscriber. Logs carry paths and statuses, never bodies or tokens.
pub fn init(cfg: &ServerConfig) {
    let mut filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // openraft's info lines are one per vote, append and snapshot step: warnings only,
    // unless the level names openraft itself (`info,openraft=info` to watch an election).
    if !cfg.log_level.contains("openraft") {
        filter = filter.add_directive("openraft=warn".parse().expect("static directive"));
    }
    // Colour only for a person at a terminal: a log redirected to a file or a journal gets
    // no escape codes (and none at all with `NO_COLOR` set, as is the convention).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if cfg.log_format == "json" {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
    install_panic_hook();
}

/// Logs a panic with where it happened, but its message only when it is a fixed string: a
/// formatted message may quote data, and data may be a secret. (A handler's panic becomes a
/// 500 and an audit record; the node keeps serving.)
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_else(|| "unknown".into());
        let message = info
            .payload()
            .downcast_ref::<&'static str>()
            .copied()
            .unwrap_or("<formatted message withheld>");
        tracing::error!(%location, "panic: {message}");
    }));
}

//! Tracing setup for the binaries: `RUST_LOG` wins, otherwise the given default filter.

use tracing_subscriber::EnvFilter;

/// Installs a stderr formatter with an `EnvFilter`. Call once, from `main`.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colour only on a terminal: logs redirected to files must stay greppable.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

//! The `archfarm-agent` binary.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// archfarm build agent: builds this host's native platforms for the farm.
#[derive(Debug, Parser)]
#[command(name = "archfarm-agent", version)]
struct Cli {
    /// Agent configuration file (TOML).
    #[arg(short, long, env = "ARCHFARM_AGENT_CONFIG")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    archfarm_shared::telemetry::init("info");
    archfarm_shared::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let config = archfarm_config::load(&cli.config)?;
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        archfarm_agent::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn signals(token: CancellationToken) {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("signal received, shutting down");
    token.cancel();
}

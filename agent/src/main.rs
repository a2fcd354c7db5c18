//! The `archfarm-agent` binary.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// archfarm build agent: builds this host's native platforms for the farm.
#[derive(Debug, Parser)]
#[command(name = "archfarm-agent", version)]
struct Cli {
    /// Agent configuration file (TOML).
    #[arg(short, long, env = "ARCHFARM_AGENT_CONFIG")]
    config: PathBuf,
    /// One-time join token (`archfarm agents token create`): when there is no certificate yet,
    /// enroll with it first.
    #[arg(long, env = "ARCHFARM_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    archfarm_shared::telemetry::init("info");
    archfarm_shared::tls::install_crypto_provider();
    let result = async {
        let config = archfarm_config::load(&cli.config)?;
        archfarm_agent::run(config, cli.join_token.as_deref(), archfarm_shared::shutdown::on_signal()).await
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

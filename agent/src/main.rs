//! The `archfarm-agent` binary.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// archfarm build agent: builds this host's native platforms for the farm.
#[derive(Debug, Parser)]
#[command(name = "archfarm-agent", version)]
struct Cli {
    /// Agent configuration file (TOML).
    #[arg(short, long, env = "ARCHFARM_AGENT_CONFIG", required_unless_present = "probe_engine")]
    config: Option<PathBuf>,
    /// Probe the Docker Engine at DOCKER_HOST (or the default socket) as the agent's health
    /// check does (`/_ping` and a one-line BuildKit build, within 60 s), say whether it is
    /// healthy, and exit: 0 when it is.
    #[arg(long)]
    probe_engine: bool,
    /// One-time join token (`archfarm agents token create`): when there is no certificate yet,
    /// enroll with it first.
    #[arg(long, env = "ARCHFARM_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// Renew this agent's certificate now, with the current one instead of a join token, and
    /// exit. A running agent renews its own 30 days before expiry; this is for one that was
    /// stopped, or to replace a key at once.
    #[arg(long, conflicts_with_all = ["probe_engine", "join_token"])]
    renew: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    archfarm_shared::telemetry::init("info");
    archfarm_shared::tls::install_crypto_provider();
    if cli.probe_engine {
        return probe().await;
    }
    let result = async {
        let config = archfarm_config::load(cli.config.as_deref().expect("required by clap"))?;
        if cli.renew {
            return archfarm_agent::enroll::renew(&config).await;
        }
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

async fn probe() -> ExitCode {
    let verdict = async {
        let engine = archfarm_agent::engine::connect(None).await?;
        match tokio::time::timeout(std::time::Duration::from_secs(60), engine.probe()).await {
            Ok(result) => result,
            Err(_) => Err("the engine did not pass the probe within 60 s (is its BuildKit wedged?)".into()),
        }
    };
    match verdict.await {
        Ok(()) => {
            println!("engine healthy: it answers and builds");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("engine unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

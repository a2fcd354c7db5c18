//! The `archfarm` binary: coordinator and release-engineer client.

use archfarm_client as client;
use archfarm_client::agents::Format;
use archfarm_coordinator::ca;
use archfarm_coordinator::cli::{
    AgentsCommand, BuildsCommand, CaCommand, Cli, Command, ImagetoolsCommand, JoinTokenCommand, TokensCommand,
};
use archfarm_shared::protocol::{AgentChange, ClientRequest};
use clap::Parser;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. });
    archfarm_shared::telemetry::init(if serving { "info" } else { "warn" });
    archfarm_shared::tls::install_crypto_provider();
    match dispatch(cli.command).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<bool> {
    match command {
        Command::Serve { config } => {
            let config = archfarm_config::load(&config)?;
            archfarm_coordinator::run(config, archfarm_shared::shutdown::on_signal()).await?;
            Ok(true)
        }
        Command::Build(args) => client::build::run(*args).await,
        Command::Builds { command } => match command {
            BuildsCommand::Ls { remote, limit, format } => {
                client::builds::ls(&remote, limit, matches!(format, Format::Json)).await.map(|()| true)
            }
            BuildsCommand::Show { remote, build, format } => {
                client::builds::show(&remote, build, matches!(format, Format::Json)).await.map(|()| true)
            }
            BuildsCommand::Watch { remote, build, progress, on_interrupt } => {
                client::builds::watch(&remote, build, progress, on_interrupt).await
            }
            BuildsCommand::Retry { remote, build, platforms, progress, on_interrupt } => {
                client::builds::retry(&remote, build, platforms, progress, on_interrupt).await
            }
            BuildsCommand::Publish { remote, build, force } => {
                client::builds::publish(&remote, build, force).await.map(|()| true)
            }
            BuildsCommand::Prune { remote } => {
                client::agents::admin(&remote, ClientRequest::PruneBuilds).await.map(|()| true)
            }
            BuildsCommand::Cancel { remote, build } => client::builds::cancel(&remote, build).await.map(|()| true),
        },
        Command::Agents { command } => agents(command).await,
        Command::Tokens { command: TokensCommand::Create { remote, name, role, scopes } } => {
            client::agents::admin(&remote, ClientRequest::CreateClientToken { name, role, scopes }).await.map(|()| true)
        }
        Command::Tokens { command: TokensCommand::Revoke { remote, name } } => {
            client::agents::admin(&remote, ClientRequest::RevokeClientToken { name }).await.map(|()| true)
        }
        Command::Imagetools { command: ImagetoolsCommand::Inspect { reference, raw, insecure } } => {
            client::imagetools::inspect(&reference, raw, &insecure).await.map(|()| true)
        }
        Command::Imagetools { command: ImagetoolsCommand::Create { tags, sources, insecure } } => {
            client::imagetools::create(&tags, &sources, &insecure).await.map(|()| true)
        }
        Command::Ca { command: CaCommand::Init { dir, names, force } } => ca::init(&dir, &names, force).map(|()| true),
        Command::Ca { command: CaCommand::IssueAgent { name, dir, out } } => {
            ca::issue_agent(&dir, &name, out.as_deref()).map(|_| true)
        }
    }
}

/// `archfarm agents ...`.
async fn agents(command: AgentsCommand) -> anyhow::Result<bool> {
    match command {
        AgentsCommand::Ls { remote, format } => client::agents::ls(&remote, format).await.map(|()| true),
        AgentsCommand::Token { command: JoinTokenCommand::Create { remote, ttl, name, platforms } } => {
            let request = ClientRequest::CreateJoinToken { ttl_secs: ttl, name, platforms };
            client::agents::admin(&remote, request).await.map(|()| true)
        }
        AgentsCommand::Revoke { remote, name, serial } => {
            client::agents::admin(&remote, ClientRequest::RevokeAgent { name, serial }).await.map(|()| true)
        }
        AgentsCommand::Drain { remote, name } => {
            let request = ClientRequest::ChangeAgent { name, change: AgentChange::Drain };
            client::agents::admin(&remote, request).await.map(|()| true)
        }
        AgentsCommand::Undrain { remote, name } => {
            let request = ClientRequest::ChangeAgent { name, change: AgentChange::Undrain };
            client::agents::admin(&remote, request).await.map(|()| true)
        }
        AgentsCommand::Unquarantine { remote, name } => {
            let request = ClientRequest::ChangeAgent { name, change: AgentChange::Unquarantine };
            client::agents::admin(&remote, request).await.map(|()| true)
        }
        AgentsCommand::Inspect { remote, name, format } => {
            client::housekeeping::inspect(&remote, name, format).await.map(|()| true)
        }
        AgentsCommand::Du { remote, name } => client::housekeeping::du(&remote, name).await.map(|()| true),
        AgentsCommand::Prune { remote, name, all, keep_storage, force } => {
            client::housekeeping::prune(&remote, name, all, keep_storage, force).await.map(|()| true)
        }
    }
}

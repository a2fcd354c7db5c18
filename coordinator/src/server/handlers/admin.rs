//! The farm's administration: join tokens for new agents, revoking, draining and unquarantining
//! agents, client tokens.

use crate::server::access::check_scope;
use crate::server::reply::Reply;
use crate::server::state::Shared;
use crate::server::store::agents::Recorded;
use crate::server::store::certificates::Binding;
use archfarm_shared::clock::now_ms;
use archfarm_shared::pki::{generate_token, token_hash};
use archfarm_shared::platform;
use archfarm_shared::protocol::{close, AgentChange, ClientResponse, Role};
use archfarm_shared::AgentName;
use tracing::info;

/// Longest life of a join token: a week.
const MAX_JOIN_TOKEN_SECS: u64 = 7 * 86_400;

/// `archfarm agents token create`: a one-time join token, valid for `ttl_secs` (1 s to a week),
/// for one name and some platforms only when they are given.
pub async fn create_join_token(shared: &Shared, ttl_secs: u64, binding: Binding) -> Reply {
    let token = generate_token();
    let expires_ms = now_ms() + ttl_secs.clamp(1, MAX_JOIN_TOKEN_SECS) * 1000;
    match shared.store.add_join_token(&token_hash(&token), expires_ms, &binding).await {
        Ok(()) => {
            info!(
                expires_ms,
                name = binding.name.as_ref().map_or("any", |n| n.as_str()),
                platforms = %platform::list(&binding.platforms),
                "join token created"
            );
            Reply::one(ClientResponse::Token { token, expires_ms: Some(expires_ms) })
        }
        Err(e) => Reply::error(e.to_string()),
    }
}

/// `archfarm agents revoke NAME [--serial S]`: the agent's certificates (or the one with that
/// serial) are refused from now on, and its connection with one of them is closed.
pub async fn revoke_agent(shared: &Shared, name: &AgentName, serial: Option<&str>) -> Reply {
    match shared.store.revoke_certificates(name, serial).await {
        Ok(serials) if serials.is_empty() => Reply::error(match serial {
            Some(s) => {
                format!("agent {name} has no live certificate with serial {s} (`archfarm agents inspect {name}`)")
            }
            None => format!("agent {name} has no live certificate on record (it never connected, or is revoked)"),
        }),
        Ok(serials) => {
            info!(agent = %name, serials = %serials.join(" "), "agent certificates revoked");
            shared.farm.disconnect(name, Some(&serials), close::REFUSED, "this agent was revoked");
            Reply::one(ClientResponse::Done {
                message: format!(
                    "agent {name}: certificate {} revoked; disconnected and refused from now on",
                    serials.join(", ")
                ),
            })
        }
        Err(e) => Reply::error(e.to_string()),
    }
}

/// `archfarm agents drain|undrain|unquarantine NAME`: recorded first, so it holds across
/// reconnections and restarts, then applied to the agent if it is connected.
pub async fn change_agent(shared: &Shared, name: &AgentName, change: AgentChange) -> Reply {
    let connected = !shared.farm.handles(Some(name)).is_empty();
    match shared.store.name_taken(name).await {
        Ok(None) if !connected => {
            return Reply::error(format!(
                "no agent named {name} is connected or holds a live certificate (`archfarm agents ls` lists them)"
            ))
        }
        Err(e) => return Reply::error(e.to_string()),
        _ => {}
    }
    let changed = match change {
        AgentChange::Drain => shared.store.set_drained(name, true).await,
        AgentChange::Undrain => shared.store.set_drained(name, false).await,
        AgentChange::Unquarantine => shared.store.unquarantine(name).await,
    };
    let (changed, recorded) = match (changed, shared.store.recorded_standing(name).await) {
        (Ok(changed), Ok(recorded)) => (changed, recorded),
        (Err(e), _) | (_, Err(e)) => return Reply::error(e.to_string()),
    };
    let running = shared.farm.apply_recorded(name, &recorded);
    info!(agent = %name, change = change.as_str(), changed, "agent standing changed by an administrator");
    let mut message = match (change, changed) {
        (AgentChange::Drain, true) => format!(
            "agent {name} drained: it finishes its {} running jobs and takes no new ones \
             (`archfarm agents undrain {name}` gives it jobs again)",
            running.unwrap_or(0)
        ),
        (AgentChange::Drain, false) => format!("agent {name} was already drained"),
        (AgentChange::Undrain, true) => format!("agent {name} undrained: it takes jobs again"),
        (AgentChange::Undrain, false) => format!("agent {name} was not drained; nothing changed"),
        (AgentChange::Unquarantine, true) => {
            format!("agent {name}: quarantine lifted and its failures forgotten")
        }
        (AgentChange::Unquarantine, false) => format!("agent {name} was not quarantined; nothing changed"),
    };
    match (&recorded, change) {
        (Recorded::Quarantined(why), AgentChange::Undrain | AgentChange::Drain) => message.push_str(&format!(
            "; it is quarantined ({why}) and gets no jobs until `archfarm agents unquarantine {name}`"
        )),
        (Recorded::Drained, AgentChange::Unquarantine) => {
            message.push_str(&format!("; it is drained and gets no jobs until `archfarm agents undrain {name}`"))
        }
        _ => {}
    }
    if running.is_none() {
        message.push_str(" (it is not connected now; this holds when it reconnects)");
    }
    Reply::one(ClientResponse::Done { message })
}

/// `archfarm tokens create`: a named client token with a role and scopes; only its hash is
/// kept.
pub async fn create_client_token(shared: &Shared, name: &str, role: Role, scopes: &[String]) -> Reply {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
        return Reply::error(format!("token name {name:?}: use 1-64 letters, digits, '-', '_', '.', '@'"));
    }
    let file = shared.settings.tokens_file.clone();
    // A file read: on the blocking pool, not the runtime's threads.
    let in_file =
        tokio::task::spawn_blocking(move || super::super::auth::token_file_names(&file)).await.unwrap_or_default();
    if name == "-" || in_file.iter().any(|n| n == name) {
        return Reply::error(format!("token name {name:?} is taken (by the token file, or reserved); choose another"));
    }
    if role != Role::Build && !scopes.is_empty() {
        return Reply::error("--scope applies to --role build only: an admin builds anywhere, a viewer nowhere");
    }
    if let Some(e) = scopes.iter().find_map(|s| check_scope(s).err()) {
        return Reply::error(e);
    }
    let token = generate_token();
    match shared.store.add_client_token(name, &token_hash(&token), role, scopes).await {
        Ok(Ok(())) => {
            info!(name = %name, %role, scopes = %scopes.join(" "), "client token created");
            Reply::one(ClientResponse::Token { token, expires_ms: None })
        }
        Ok(Err(message)) => Reply::error(message),
        Err(e) => Reply::error(e.to_string()),
    }
}

/// `archfarm tokens revoke`.
pub async fn revoke_client_token(shared: &Shared, name: &str) -> Reply {
    match shared.store.revoke_client_token(name).await {
        Ok(true) => {
            shared.sessions.revoke(name);
            info!(name = %name, "client token revoked; its open sessions closed");
            Reply::one(ClientResponse::Done { message: format!("client token {name} revoked") })
        }
        Ok(false) => Reply::error(format!("no live client token named {name:?}")),
        Err(e) => Reply::error(e.to_string()),
    }
}

/// `archfarm builds prune`: collects now and says what went.
pub async fn prune_builds(shared: &Shared) -> Reply {
    match crate::server::gc::sweep(shared).await {
        Ok(swept) => Reply::one(ClientResponse::Done { message: swept.to_string() }),
        Err(e) => Reply::error(e),
    }
}

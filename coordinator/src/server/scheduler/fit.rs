//! Whether an agent fits a job: its platform (at the x86-64 level the job names), the labels or
//! CPU features the build requires, and an engine that does what the build needs of it
//! ([`EngineNeed`]); and, for a build no agent fits, what is missing.

use super::Offer;
use archfarm_shared::capabilities::{base, Requirement};
use archfarm_shared::engine_needs::EngineNeed;
use archfarm_shared::platform::{self, Platform};
use archfarm_shared::AgentName;
use std::fmt;

/// What a job needs of its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wants {
    /// Its platform, for example `linux/amd64/v3`.
    pub platform: Platform,
    /// `KEY=VALUE` pairs the agent must have: labels, or `cpu=FEATURE`.
    pub require: Vec<(String, String)>,
    /// Jobs of one key share a repository, Dockerfile and platform: the agent that last ran one
    /// has a warm build cache for the next. None: no preference.
    pub warm_key: Option<String>,
    /// What the agent's engine must do.
    pub engine: Vec<EngineNeed>,
}

impl Wants {
    /// Just a platform.
    pub fn platform(platform: Platform) -> Self {
        Wants { platform, require: Vec::new(), warm_key: None, engine: Vec::new() }
    }

    /// What a build's job for `platform` needs, given the build's `--require` list and what it
    /// needs of the engine.
    pub fn of(
        platform: &Platform,
        requirements: &[Requirement],
        engine: &[EngineNeed],
        warm_key: Option<String>,
    ) -> Self {
        let require =
            requirements.iter().filter(|r| r.applies_to(platform)).map(|r| (r.key.clone(), r.value.clone())).collect();
        Wants { platform: platform.clone(), require, warm_key, engine: engine.to_vec() }
    }

    /// Whether `offer` fits it.
    pub fn fits(&self, offer: &Offer) -> bool {
        self.fits_host(offer) && self.engine.iter().all(|n| n.met_by(&offer.engine))
    }

    /// Whether `offer` fits it but for its engine.
    fn fits_host(&self, offer: &Offer) -> bool {
        offer.capabilities.builds(&offer.platforms, &self.platform)
            && self.require.iter().all(|(k, v)| offer.capabilities.meets(k, v))
    }

    fn describe(&self) -> String {
        if self.require.is_empty() {
            return self.platform.to_string();
        }
        let pairs: Vec<String> = self.require.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{} with {}", self.platform, pairs.join(" "))
    }
}

/// The farm cannot build some requested platforms natively, or not as required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoAgent {
    /// Requested platforms no connected agent declares, in request order.
    pub missing: Vec<Platform>,
    /// Platforms the farm can build now, sorted.
    pub available: Vec<Platform>,
    /// For platforms some agent declares but none fits: what was asked and what agents have.
    pub unmet: Vec<String>,
}

impl std::error::Error for NoAgent {}

impl fmt::Display for NoAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!(
                "no agent builds {} natively; the farm has {}. Start an agent on a host of that platform \
                 (or declare it in an agent's extra_platforms if its CPU runs it natively), or drop it from --platform",
                platform::list(&self.missing),
                platform::list(&self.available)
            ));
        }
        parts.extend(self.unmet.iter().cloned());
        f.write_str(&parts.join("; "))
    }
}

/// Checks every requested job against the active agents.
pub(super) fn check(
    active: &[(&AgentName, &Offer)],
    requested: &[Wants],
    available: Vec<Platform>,
) -> Result<(), NoAgent> {
    let mut missing = Vec::new();
    let mut unmet = Vec::new();
    for wants in requested {
        if active.iter().any(|(_, o)| wants.fits(o)) {
            continue;
        }
        let hosts: Vec<&(&AgentName, &Offer)> = active.iter().filter(|(_, o)| wants.fits_host(o)).collect();
        if !hosts.is_empty() {
            unmet.push(engine_unmet(wants, &hosts, active));
            continue;
        }
        let declared = base(&wants.platform);
        let candidates: Vec<&(&AgentName, &Offer)> =
            active.iter().filter(|(_, o)| o.platforms.contains(&declared)).collect();
        if candidates.is_empty() {
            missing.push(wants.platform.clone());
            continue;
        }
        let shown: Vec<String> = candidates
            .iter()
            .take(8)
            .map(|(n, o)| format!("{n}: {}", o.capabilities.summary_or("no level or labels")))
            .collect();
        let more = candidates.len().saturating_sub(shown.len());
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        unmet.push(format!(
            "no agent fits {}: the {declared} agents have {}{more}. Ask for a level they reach, drop or change \
             --require, or give an agent that label (`labels` in its config)",
            wants.describe(),
            shown.join("; ")
        ));
    }
    if missing.is_empty() && unmet.is_empty() {
        Ok(())
    } else {
        Err(NoAgent { missing, available, unmet })
    }
}

/// Why no agent fits `wants` when `hosts` fit it but for their engines: what each of them
/// lacks, and which agents' engines could.
fn engine_unmet(wants: &Wants, hosts: &[&(&AgentName, &Offer)], active: &[(&AgentName, &Offer)]) -> String {
    let mut parts = Vec::new();
    for need in wants.engine.iter().filter(|n| hosts.iter().any(|(_, o)| !n.met_by(&o.engine))) {
        let lacking: Vec<String> = hosts
            .iter()
            .filter(|(_, o)| !need.met_by(&o.engine))
            .take(8)
            .map(|(n, o)| format!("{n} has {}", need.lack(&o.engine)))
            .collect();
        let able: Vec<String> = active
            .iter()
            // Of the agents for this platform, only those that fit it but for their engine.
            .filter(|(_, o)| {
                need.met_by(&o.engine) && (wants.fits_host(o) || !o.platforms.contains(&base(&wants.platform)))
            })
            .take(8)
            .map(|(n, o)| format!("{n} ({})", archfarm_shared::platform::list(&o.platforms)))
            .collect();
        let able = if able.is_empty() { "none".to_owned() } else { able.join(", ") };
        parts.push(format!("{need}: {}; agents whose engine can: {able}", lacking.join(", ")));
    }
    format!(
        "no agent for {} can run this build: {}. Run an agent for it on such an engine (docs/operations.md, \
         \"Engines and image stores\"), or drop the flag",
        wants.describe(),
        parts.join("; ")
    )
}

//! What this host builds natively: its engine's platform (or the configured override) plus the
//! configured extra platforms; and its CPU's x86-64 level and features, and its labels.
//! Nothing is assumed beyond what the engine, the CPU and the config say.

use anyhow::bail;
use archfarm_config::AgentConfig;
use archfarm_shared::capabilities::{self, Capabilities};
use archfarm_shared::Platform;

/// The capabilities an agent declaring `platforms` registers: the x86-64 level its CPU reaches
/// (or the lower one `x86_64_level` in its config sets) when it declares linux/amd64, the CPU's
/// features, and the config's labels.
pub fn capabilities(platforms: &[Platform], config: &AgentConfig) -> anyhow::Result<Capabilities> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let (detected, cpu_features) = capabilities::from_cpuinfo(&cpuinfo, std::env::consts::ARCH);
    let declares_amd64 = platforms.iter().any(|p| p.arch() == "amd64" && p.variant().is_none());
    if let (false, Some(level)) = (declares_amd64, config.x86_64_level) {
        tracing::warn!("x86_64_level = {level} in the agent's config is ignored: this agent declares no linux/amd64");
    }
    let x86_64_level = match (declares_amd64, detected, config.x86_64_level) {
        (false, _, _) => None,
        (true, Some(cpu), Some(set)) if set > cpu => {
            bail!("x86_64_level = {set} in the agent's config, but this host's CPU reaches only v{cpu}")
        }
        (true, _, Some(set)) => Some(set),
        // A stand-in for amd64 on another CPU promises only the baseline.
        (true, cpu, None) => Some(cpu.unwrap_or(1)),
    };
    Ok(Capabilities { x86_64_level, cpu_features, labels: config.labels.clone() })
}

/// The platforms an agent declares, its native one first, without duplicates.
pub fn declared(engine: &Platform, native_override: Option<&Platform>, extra: &[Platform]) -> Vec<Platform> {
    let native = native_override.unwrap_or(engine).clone();
    let mut out = vec![native];
    for p in extra {
        if !out.contains(p) {
            out.push(p.clone());
        }
    }
    out
}

/// A warning to log when the configured native platform is not the engine's.
pub fn override_warning(engine: &Platform, native_override: Option<&Platform>) -> Option<String> {
    let o = native_override?;
    (o != engine).then(|| {
        format!(
            "native_platform is set to {o} but the Docker Engine runs {engine}: this host stands in for a {o} host. \
             Builds for {o} that RUN commands will fail here unless the engine can execute {o} binaries"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn native_first_then_extras_without_duplicates() {
        let got = declared(&p("linux/amd64"), None, &[p("linux/386"), p("linux/amd64")]);
        assert_eq!(got, vec![p("linux/amd64"), p("linux/386")]);
        let got = declared(&p("linux/amd64"), Some(&p("linux/arm64")), &[]);
        assert_eq!(got, vec![p("linux/arm64")], "an override replaces the engine's platform");
    }

    #[test]
    fn overriding_says_so() {
        assert!(override_warning(&p("linux/amd64"), None).is_none());
        assert!(override_warning(&p("linux/amd64"), Some(&p("linux/amd64"))).is_none());
        let w = override_warning(&p("linux/amd64"), Some(&p("linux/arm64"))).unwrap();
        assert!(w.contains("stands in for a linux/arm64 host"), "{w}");
    }
}

//! What this host builds natively: its engine's platform (or the configured override) plus the
//! configured extra platforms. Nothing is assumed beyond what the engine and config say.

use archfarm_shared::Platform;

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

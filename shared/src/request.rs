//! The one set of rules a build request must meet. The client checks them before it uploads
//! anything; the coordinator checks them again when the request arrives, since a client may be
//! hostile. Both give the same messages, worded for the `archfarm build` flags.

use crate::capabilities::{check_pair, MAX_REQUIREMENTS};
use crate::protocol::BuildRequest;
use crate::reference::ImageRef;
use crate::registry;

/// Most build args, or labels, in one request.
pub const MAX_PAIRS: usize = 256;
/// Longest build-arg or label name.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest build-arg or label value.
pub const MAX_VALUE_BYTES: usize = 64 << 10;
/// Longest `--target` stage name.
pub const MAX_TARGET_BYTES: usize = 128;
/// Longest `--job-timeout` or `--idle-timeout`: a week.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 86_400;
/// Most `--test` commands in one build.
pub const MAX_TESTS: usize = 16;
/// Largest `--test` command, all its arguments together.
pub const MAX_TEST_BYTES: usize = 16 << 10;

/// Where a valid request's images go.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The repository of every tag, as `REGISTRY/REPOSITORY:latest`: the per-platform images
    /// are pushed there by digest.
    pub repository: ImageRef,
    /// Every requested tag, parsed, in order.
    pub tags: Vec<ImageRef>,
}

/// Why a build request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No platform.
    #[error("no platform requested: pass --platform, for example linux/amd64,linux/arm64")]
    NoPlatform,
    /// A `--require` that is malformed, or names a platform the build does not have.
    #[error("{0}")]
    BadRequirement(String),
    /// An optional platform the build does not have, or names twice.
    #[error("{0}")]
    BadOptional(String),
    /// A platform listed twice.
    #[error("--platform lists {0} twice")]
    PlatformTwice(String),
    /// No tag.
    #[error("no tag given: pass -t REGISTRY/REPOSITORY:TAG")]
    NoTag,
    /// A tag that is not an image reference.
    #[error("{0}")]
    BadTag(String),
    /// A tag naming a digest.
    #[error("-t {0:?} names a digest; the farm publishes under tags only")]
    DigestTag(String),
    /// Tags in two repositories.
    #[error("all tags must be in one repository (the per-platform images live beside the index): {0} and {1}")]
    TwoRepositories(String, String),
    /// Too many build args or labels.
    #[error("{count} {flag} values given; at most {MAX_PAIRS}")]
    TooManyPairs {
        /// `--build-arg` or `--label`.
        flag: &'static str,
        /// How many were given.
        count: usize,
    },
    /// A build-arg or label name that is empty, long, or holds whitespace, control characters or '='.
    #[error("{flag} name {key:?} must be 1-{MAX_KEY_BYTES} characters without whitespace, control characters or '='")]
    BadKey {
        /// `--build-arg` or `--label`.
        flag: &'static str,
        /// The name.
        key: String,
    },
    /// A build-arg or label value that is too large or holds NUL.
    #[error("{flag} {key}: the value must be at most 64 KiB, without NUL")]
    BadValue {
        /// `--build-arg` or `--label`.
        flag: &'static str,
        /// The name.
        key: String,
    },
    /// A `--target` that is not a stage name.
    #[error(
        "--target {0:?} is not a stage name (1-128 letters, digits, '_', '-', '.', starting with a letter or digit)"
    )]
    BadTarget(String),
    /// A `--job-timeout` or `--idle-timeout` out of range.
    #[error("{flag} must be between 1 s and 7 days; {secs} s was given")]
    BadTimeout {
        /// `--job-timeout` or `--idle-timeout`.
        flag: &'static str,
        /// What was given.
        secs: u64,
    },
    /// Too many `--test` commands.
    #[error("{0} --test commands given; at most {MAX_TESTS}")]
    TooManyTests(usize),
    /// An empty, oversized or NUL-holding `--test` command.
    #[error("--test {0:?} must name a command, at most 16 KiB in all, without NUL")]
    BadTest(String),
    /// A `--test-target` that is not a stage name.
    #[error("--test-target {0:?} is not a stage name (1-128 letters, digits, '_', '-', '.', starting with a letter or digit)")]
    BadTestTarget(String),
    /// A cache reference that cannot be used.
    #[error("{flag} ref {reference:?}: {why}")]
    BadCache {
        /// `--cache-from` or `--cache-to`.
        flag: &'static str,
        /// The reference.
        reference: String,
        /// What is wrong.
        why: String,
    },
    /// A Dockerfile path outside the context.
    #[error("Dockerfile path {0:?} must be relative to the context, without '..'")]
    BadDockerfile(String),
}

/// Checks every field of `req` but its context digest (which its type already guarantees).
/// Returns where its images go: the registry repository of its tags when it pushes, or none
/// (the agents then hand their images to the coordinator, and the tags only name the result).
pub fn validate(req: &BuildRequest) -> Result<Option<Destination>, RequestError> {
    if req.platforms.is_empty() {
        return Err(RequestError::NoPlatform);
    }
    for (i, p) in req.platforms.iter().enumerate() {
        if req.platforms[..i].contains(p) {
            return Err(RequestError::PlatformTwice(p.to_string()));
        }
    }
    // Without --push the tags only name the result (--load, --output): the images travel
    // through the coordinator, and the tags need no registry behind them.
    let destination = match (req.push, req.tags.is_empty()) {
        (true, _) => Some(destination(&req.tags)?),
        (false, false) => {
            destination(&req.tags)?;
            None
        }
        (false, true) => None,
    };
    check_pairs(&req.build_args, "--build-arg")?;
    check_pairs(&req.labels, "--label")?;
    if let Some(t) = req.target.as_ref().filter(|t| !is_stage(t)) {
        return Err(RequestError::BadTarget(t.clone()));
    }
    if let Some(t) = req.test_target.as_ref().filter(|t| !is_stage(t)) {
        return Err(RequestError::BadTestTarget(t.clone()));
    }
    if req.tests.len() > MAX_TESTS {
        return Err(RequestError::TooManyTests(req.tests.len()));
    }
    for test in &req.tests {
        let bytes: usize = test.iter().map(String::len).sum();
        if test.first().is_none_or(|c| c.is_empty()) || bytes > MAX_TEST_BYTES || test.iter().any(|a| a.contains('\0'))
        {
            return Err(RequestError::BadTest(test.join(" ")));
        }
    }
    for (flag, secs) in [("--job-timeout", req.job_timeout_secs), ("--idle-timeout", req.idle_timeout_secs)] {
        if let Some(secs) = secs.filter(|s| !(1..=MAX_TIMEOUT_SECS).contains(s)) {
            return Err(RequestError::BadTimeout { flag, secs });
        }
    }
    check_cache(req, destination.as_ref())?;
    check_requirements(req)?;
    for (i, p) in req.optional_platforms.iter().enumerate() {
        if !req.platforms.contains(p) || req.optional_platforms[..i].contains(p) {
            return Err(RequestError::BadOptional(format!(
                "--optional-platform {p}: each optional platform must be one of the build's platforms, once"
            )));
        }
    }
    let d = &req.dockerfile;
    if d.is_empty() || d.starts_with('/') || d.split('/').any(|c| c == "..") || d.contains('\0') {
        return Err(RequestError::BadDockerfile(d.clone()));
    }
    Ok(destination)
}

fn check_requirements(req: &BuildRequest) -> Result<(), RequestError> {
    if req.requirements.len() > MAX_REQUIREMENTS {
        return Err(RequestError::BadRequirement(format!(
            "{} --require flags: at most {MAX_REQUIREMENTS}",
            req.requirements.len()
        )));
    }
    for r in &req.requirements {
        check_pair(&r.key, &r.value).map_err(|e| RequestError::BadRequirement(format!("--require {r}: {e}")))?;
        if let Some(p) = r.platform.as_ref().filter(|p| !req.platforms.contains(p)) {
            return Err(RequestError::BadRequirement(format!(
                "--require {r}: the build has no platform {p} (it has {})",
                crate::platform::list(&req.platforms)
            )));
        }
    }
    Ok(())
}

/// A `--test` command as a shell would show it (quoted where needed).
pub fn test_line(argv: &[String]) -> String {
    shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| argv.join(" "))
}

/// What a build tests each platform with, as the release engineer wrote it: `stage NAME` for
/// `--test-target`, then each `--test` command.
pub fn tests_of(req: &BuildRequest) -> Vec<String> {
    req.test_target.iter().map(|s| format!("stage {s}")).chain(req.tests.iter().map(|t| test_line(t))).collect()
}

/// Most `--cache-from` references in one build.
pub const MAX_CACHE_FROM: usize = 8;

fn check_cache(req: &BuildRequest, destination: Option<&Destination>) -> Result<(), RequestError> {
    let bad =
        |flag, reference: &str, why: String| RequestError::BadCache { flag, reference: reference.to_owned(), why };
    if req.cache_from.len() > MAX_CACHE_FROM {
        return Err(bad("--cache-from", &req.cache_from[MAX_CACHE_FROM], format!("at most {MAX_CACHE_FROM} are read")));
    }
    let refs = req.cache_from.iter().map(|r| ("--cache-from", r)).chain(req.cache_to.iter().map(|r| ("--cache-to", r)));
    for (flag, reference) in refs {
        let parsed = registry::parse_reference(reference).map_err(|e| bad(flag, reference, e.to_string()))?;
        if parsed.digest().is_some() {
            return Err(bad(flag, reference, "a cache is written and read by tag, not by digest".into()));
        }
        if flag == "--cache-to" {
            let Some(destination) = destination else {
                let why = "the cache images are the pushed images, tagged: it needs --push and -t".into();
                return Err(bad(flag, reference, why));
            };
            if parsed.registry() != destination.repository.registry() {
                let why = format!(
                    "the cache images are the built images, tagged: use the registry of -t, {}",
                    destination.repository.registry()
                );
                return Err(bad(flag, reference, why));
            }
        }
    }
    Ok(())
}

/// Whether `t` can name a Dockerfile stage.
fn is_stage(t: &str) -> bool {
    (1..=MAX_TARGET_BYTES).contains(&t.len())
        && t.starts_with(|c: char| c.is_ascii_alphanumeric())
        && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The repository and parsed tags of `tags`: at least one, none by digest, all in one repository.
pub fn destination(tags: &[String]) -> Result<Destination, RequestError> {
    let mut parsed: Vec<ImageRef> = Vec::with_capacity(tags.len());
    for t in tags {
        let r = registry::parse_reference(t).map_err(|e| RequestError::BadTag(e.to_string()))?;
        if r.digest().is_some() {
            return Err(RequestError::DigestTag(t.clone()));
        }
        parsed.push(r);
    }
    let first = parsed.first().ok_or(RequestError::NoTag)?;
    if let Some(other) = parsed.iter().find(|t| !t.same_repository(first)) {
        return Err(RequestError::TwoRepositories(first.whole(), other.whole()));
    }
    Ok(Destination { repository: first.with_tag("latest"), tags: parsed })
}

/// Build args and labels: bounded in number and size, names without whitespace, control
/// characters or '=', values without NUL.
fn check_pairs(pairs: &[(String, String)], flag: &'static str) -> Result<(), RequestError> {
    if pairs.len() > MAX_PAIRS {
        return Err(RequestError::TooManyPairs { flag, count: pairs.len() });
    }
    for (k, v) in pairs {
        let bad_char = |c: char| c.is_whitespace() || c.is_control() || c == '=';
        if k.is_empty() || k.len() > MAX_KEY_BYTES || k.chars().any(bad_char) {
            return Err(RequestError::BadKey { flag, key: k.clone() });
        }
        if v.len() > MAX_VALUE_BYTES || v.contains('\0') {
            return Err(RequestError::BadValue { flag, key: k.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Digest;

    fn request() -> BuildRequest {
        BuildRequest {
            build_args: vec![("VERSION".into(), "1.4".into()), ("EMPTY".into(), String::new())],
            target: Some("release-stage_2.x".into()),
            labels: vec![("org.opencontainers.image.source".into(), "https://example.com/a=b".into())],
            ..BuildRequest::new(
                vec!["linux/amd64".parse().unwrap(), "linux/arm64".parse().unwrap()],
                vec!["127.0.0.1:5000/team/app:1".into(), "127.0.0.1:5000/team/app:latest".into()],
                Digest::of(b"c"),
                "docker/Dockerfile",
            )
        }
    }

    fn refused(edit: impl FnOnce(&mut BuildRequest)) -> RequestError {
        let mut r = request();
        edit(&mut r);
        validate(&r).expect_err("refused")
    }

    #[test]
    fn a_valid_request_names_its_repository_and_tags() {
        let d = validate(&request()).unwrap().unwrap();
        assert_eq!(d.repository.whole(), "127.0.0.1:5000/team/app:latest");
        assert_eq!(d.tags.iter().map(|t| t.tag().unwrap()).collect::<Vec<_>>(), ["1", "latest"]);
    }

    #[test]
    fn platforms_must_be_given_once_each() {
        assert_eq!(refused(|r| r.platforms.clear()), RequestError::NoPlatform);
        let twice = refused(|r| r.platforms.push("linux/amd64".parse().unwrap()));
        assert_eq!(twice.to_string(), "--platform lists linux/amd64 twice");
    }

    #[test]
    fn tags_must_be_valid_tag_references_in_one_repository() {
        assert_eq!(refused(|r| r.tags.clear()).to_string(), "no tag given: pass -t REGISTRY/REPOSITORY:TAG");
        for bad in ["127.0.0.1:5000/App:1", "127.0.0.1:5000/app:bad tag", "", "app::1"] {
            let e = refused(|r| r.tags = vec![bad.into()]).to_string();
            assert!(e.contains("invalid image reference") && e.contains("REGISTRY/REPOSITORY:TAG"), "{bad}: {e}");
        }
        let by_digest = format!("127.0.0.1:5000/team/app@{}", Digest::of(b"x"));
        assert!(refused(|r| r.tags.push(by_digest)).to_string().contains("names a digest"));
        let e = refused(|r| r.tags.push("127.0.0.1:5000/other:1".into())).to_string();
        assert!(e.contains("all tags must be in one repository"), "{e}");
        assert!(e.contains("127.0.0.1:5000/team/app:1 and 127.0.0.1:5000/other:1"), "{e}");
        let e = refused(|r| r.tags.push("127.0.0.2:5000/team/app:1".into())).to_string();
        assert!(e.contains("one repository"), "another registry is another repository: {e}");
    }

    #[test]
    fn build_args_and_labels_are_bounded_and_clean() {
        let e = refused(|r| r.build_args = vec![("A B".into(), "1".into())]);
        assert_eq!(
            e.to_string(),
            "--build-arg name \"A B\" must be 1-256 characters without whitespace, control characters or '='"
        );
        assert!(refused(|r| r.build_args = vec![(String::new(), "1".into())]).to_string().contains("name \"\""));
        assert!(refused(|r| r.build_args = vec![("A\u{1}".into(), "1".into())]).to_string().contains("must be"));
        assert!(refused(|r| r.build_args = vec![("K".repeat(257), "1".into())]).to_string().contains("1-256"));
        let e = refused(|r| r.build_args = vec![("A".into(), "x\0y".into())]);
        assert_eq!(e.to_string(), "--build-arg A: the value must be at most 64 KiB, without NUL");
        let e = refused(|r| r.build_args = vec![("A".into(), "x".repeat(MAX_VALUE_BYTES + 1))]);
        assert!(e.to_string().contains("at most 64 KiB"), "{e}");
        let e = refused(|r| r.labels = vec![("k=v".into(), "1".into())]);
        assert!(e.to_string().starts_with("--label name \"k=v\""), "{e}");
        let e = refused(|r| r.build_args = (0..=MAX_PAIRS).map(|i| (format!("K{i}"), String::new())).collect());
        assert_eq!(e.to_string(), "257 --build-arg values given; at most 256");
        let e = refused(|r| r.labels = (0..=MAX_PAIRS).map(|i| (format!("K{i}"), String::new())).collect());
        assert!(e.to_string().starts_with("257 --label values"), "{e}");
    }

    #[test]
    fn requirements_name_only_the_builds_platforms_and_are_bounded() {
        let req = |s: &str| s.parse::<crate::capabilities::Requirement>().unwrap();
        let platforms = request().platforms;
        assert!(validate(&BuildRequest { requirements: vec![req("region=eu")], ..request() }).is_ok());
        let own = format!("{}:disk=nvme", platforms[0]);
        assert!(validate(&BuildRequest { requirements: vec![req(&own)], ..request() }).is_ok());
        let e = refused(|r| r.requirements = vec![req("linux/s390x:region=eu")]).to_string();
        assert!(e.starts_with("--require linux/s390x:region=eu: the build has no platform linux/s390x"), "{e}");
        let e = refused(|r| r.requirements = (0..33).map(|i| req(&format!("k{i}=v"))).collect()).to_string();
        assert_eq!(e, "33 --require flags: at most 32");
        let e = refused(|r| r.optional_platforms = vec!["linux/s390x".parse().unwrap()]).to_string();
        assert!(e.starts_with("--optional-platform linux/s390x: each optional platform must be"), "{e}");
        let own = platforms[1].clone();
        assert!(validate(&BuildRequest { optional_platforms: vec![own.clone()], ..request() }).is_ok());
        assert!(refused(|r| r.optional_platforms = vec![own.clone(), own.clone()]).to_string().contains("once"));
        // Decoded from the wire unchecked: the same rules apply.
        let raw = crate::capabilities::Requirement { platform: None, key: "Bad Key".into(), value: "v".into() };
        assert!(refused(|r| r.requirements = vec![raw]).to_string().contains("label key"));
    }

    #[test]
    fn target_must_be_a_stage_name() {
        for bad in ["", "stage; rm -rf /", "-x", ".x", "a b", &"s".repeat(129)] {
            let e = refused(|r| r.target = Some(bad.into()));
            assert!(e.to_string().starts_with("--target") && e.to_string().contains("is not a stage name"), "{e}");
        }
        assert!(validate(&BuildRequest { target: None, ..request() }).is_ok());
    }

    #[test]
    fn time_limits_are_at_least_a_second_and_at_most_a_week() {
        let e = refused(|r| r.job_timeout_secs = Some(0));
        assert_eq!(e.to_string(), "--job-timeout must be between 1 s and 7 days; 0 s was given");
        let e = refused(|r| r.idle_timeout_secs = Some(MAX_TIMEOUT_SECS + 1));
        assert!(e.to_string().starts_with("--idle-timeout must be between"), "{e}");
        let limits = BuildRequest { job_timeout_secs: Some(1), idle_timeout_secs: Some(MAX_TIMEOUT_SECS), ..request() };
        assert!(validate(&limits).is_ok());
    }

    #[test]
    fn a_request_stored_before_time_limits_existed_still_reads() {
        let mut stored = serde_json::to_value(request()).unwrap();
        let fields = stored.as_object_mut().unwrap();
        fields.remove("job_timeout_secs");
        fields.remove("idle_timeout_secs");
        let read: BuildRequest = serde_json::from_value(stored).unwrap();
        assert_eq!((read.job_timeout_secs, read.idle_timeout_secs), (None, None));
        assert_eq!(read.platforms, request().platforms);
    }

    #[test]
    fn the_dockerfile_stays_inside_the_context() {
        for bad in ["", "/etc/Dockerfile", "../Dockerfile", "a/../../Dockerfile", "a\0b"] {
            let e = refused(|r| r.dockerfile = bad.into()).to_string();
            assert!(e.contains("must be relative to the context, without '..'"), "{bad:?}: {e}");
        }
        assert!(validate(&BuildRequest { dockerfile: "a/..b/Dockerfile".into(), ..request() }).is_ok());
    }

    #[test]
    fn tests_are_commands_and_bounded_and_a_test_stage_is_a_stage() {
        let tests = |t: Vec<Vec<&str>>| BuildRequest {
            tests: t.into_iter().map(|a| a.into_iter().map(str::to_owned).collect()).collect(),
            ..request()
        };
        assert!(validate(&tests(vec![vec!["/bin/sh", "-c", "make test"]])).is_ok());
        assert_eq!(
            validate(&tests(vec![vec![]])).unwrap_err().to_string(),
            "--test \"\" must name a command, at most 16 KiB in all, without NUL"
        );
        assert!(matches!(validate(&tests(vec![vec!["x"]; 17])), Err(RequestError::TooManyTests(17))));
        let stage = BuildRequest { test_target: Some("-x".into()), ..request() };
        assert!(validate(&stage).unwrap_err().to_string().starts_with("--test-target \"-x\""));
    }

    #[test]
    fn cache_refs_are_tags_and_the_cache_goes_to_the_registry_of_the_tags() {
        let from = BuildRequest { cache_from: vec![format!("127.0.0.1:5000/app@{}", Digest::of(b"x"))], ..request() };
        assert!(validate(&from).unwrap_err().to_string().contains("not by digest"));
        let to = BuildRequest { cache_to: Some("other.example/app:cache".into()), ..request() };
        assert!(validate(&to).unwrap_err().to_string().contains("use the registry of -t"));
        let ok = BuildRequest {
            cache_to: Some(format!("{}:cache", request().tags[0].rsplit_once(':').unwrap().0)),
            ..request()
        };
        assert!(validate(&ok).is_ok(), "{:?}", validate(&ok));
    }
}

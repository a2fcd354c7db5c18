//! Native provenance: the in-toto statement, with an SLSA v1 provenance predicate, that the
//! coordinator attaches to each platform's image, stored the way BuildKit stores one (an
//! attestation manifest listed in the index, see [`crate::oci::index_json_with`]).
//!
//! It records who built the image and how: the agent (its name and the sha256 of its
//! certificate), the builder platform (the platform the agent declared as native, which is the
//! target platform: nothing was emulated), the context digest, the Dockerfile path, the build
//! arguments and target, the base images as resolved by digest, and when the attempt that
//! built it started and finished. Build arguments whose names say they hold a secret are
//! recorded without their value.

use crate::ids::{AgentName, BuildId, Digest};
use crate::platform::Platform;
use crate::protocol::BuildRequest;
use serde::{Deserialize, Serialize};

/// The in-toto statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The SLSA provenance predicate type.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// What kind of build the predicate describes.
pub const BUILD_TYPE: &str = "urn:archfarm:native-build:v1";

/// A base image of a build as the registry resolved it when the build ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedBase {
    /// As the Dockerfile names it (build arguments put in).
    pub reference: String,
    /// The digest its tag resolved to (an index or a manifest).
    pub digest: Digest,
}

/// What one platform's statement is made of.
#[derive(Debug, Clone)]
pub struct Provenance<'a> {
    /// The repository the image is in, `registry/name`.
    pub repository: &'a str,
    /// The image's manifest digest: the statement's subject.
    pub subject: &'a Digest,
    /// The platform it was built for.
    pub platform: &'a Platform,
    /// The agent that built it.
    pub agent: &'a AgentName,
    /// The sha256 of that agent's certificate (DER), hex.
    pub agent_certificate_sha256: &'a str,
    /// The platforms that agent declared as native.
    pub agent_platforms: &'a [Platform],
    /// The build, and the attempt (`job/attempt`) that made the image.
    pub build: &'a BuildId,
    /// `JOB/ATTEMPT`.
    pub invocation: String,
    /// The build's request.
    pub request: &'a BuildRequest,
    /// Its base images as resolved.
    pub bases: &'a [ResolvedBase],
    /// When the attempt started and when its image was verified, ms since the Unix epoch.
    pub started_ms: u64,
    /// See `started_ms`.
    pub finished_ms: u64,
}

/// `{"sha256": "hex"}` of a digest.
fn digest_set(d: &Digest) -> serde_json::Value {
    let (algorithm, hex) = d.as_str().split_once(':').unwrap_or(("sha256", d.as_str()));
    serde_json::json!({ algorithm: hex })
}

fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Whether a build argument's name says it holds a secret.
fn secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["SECRET", "TOKEN", "PASS", "PWD", "CREDENTIAL", "AUTH", "CERT", "COOKIE", "SESSION", "SALT"]
        .iter()
        .any(|s| upper.contains(s))
        || upper == "KEY"
        || upper.ends_with("_KEY")
        || upper.starts_with("KEY_")
}

/// Base images recorded, at most; more are left out of the statement.
pub const MAX_BASES: usize = 16;

/// The bases an agent reported that a statement records: well-formed references of at most
/// 512 characters, at most [`MAX_BASES`] of them (the agent's word is bounded, not trusted).
fn recorded_bases(bases: &[ResolvedBase]) -> impl Iterator<Item = &ResolvedBase> {
    bases
        .iter()
        .filter(|b| b.reference.len() <= 512 && crate::registry::parse_reference(&b.reference).is_ok())
        .take(MAX_BASES)
}

/// The statement, as canonical JSON bytes.
pub fn statement(p: &Provenance) -> Vec<u8> {
    let value = serde_json::json!({
        "_type": STATEMENT_TYPE,
        "subject": [{ "name": p.repository, "digest": digest_set(p.subject) }],
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": { "buildDefinition": build_definition(p), "runDetails": run_details(p) },
    });
    // Canonical: the same build gives the same bytes, and so the same attestation digest.
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
    // A `serde_json::Value` always serialises.
    let _ = value.serialize(&mut ser);
    out
}

/// What was built from what: the request's parameters, the agent, and the resolved inputs.
fn build_definition(p: &Provenance) -> serde_json::Value {
    let args: serde_json::Map<String, serde_json::Value> = p
        .request
        .build_args
        .iter()
        .map(|(k, v)| (k.clone(), if secret_name(k) { "(not recorded)".into() } else { v.clone().into() }))
        .collect();
    let mut dependencies: Vec<serde_json::Value> = recorded_bases(p.bases)
        .map(|b| serde_json::json!({ "uri": format!("docker-image://{}", b.reference), "digest": digest_set(&b.digest) }))
        .collect();
    dependencies.push(serde_json::json!({
        "uri": "archfarm-context://".to_owned() + p.request.context.as_str(),
        "digest": digest_set(&p.request.context),
    }));
    serde_json::json!({
        "buildType": BUILD_TYPE,
        "externalParameters": {
            "platform": p.platform.to_string(),
            "context": { "digest": digest_set(&p.request.context) },
            "dockerfile": p.request.dockerfile,
            "target": p.request.target,
            "buildArgs": args,
            "labels": p.request.labels.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "noCache": p.request.no_cache,
            "pull": p.request.pull,
        },
        "internalParameters": {
            // The platform the agent declared as native: the target's, so nothing was emulated.
            "builderPlatform": crate::capabilities::base(p.platform).to_string(),
            "emulated": false,
            "agent": {
                "name": p.agent.as_str(),
                "certificateSha256": p.agent_certificate_sha256,
                "nativePlatforms": p.agent_platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
            },
        },
        "resolvedDependencies": dependencies,
    })
}

/// Who ran it, and when.
fn run_details(p: &Provenance) -> serde_json::Value {
    serde_json::json!({
        "builder": {
            "id": format!("archfarm-agent://{}", p.agent.as_str()),
            "version": { "archfarm": env!("CARGO_PKG_VERSION") },
        },
        "metadata": {
            "invocationId": format!("{}/{}", p.build.as_str(), p.invocation),
            "startedOn": rfc3339(p.started_ms),
            "finishedOn": rfc3339(p.finished_ms),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_names_its_subject_agent_native_platform_inputs_and_times() {
        let arm: Platform = "linux/arm64".parse().unwrap();
        let mut req =
            BuildRequest::new(vec![arm.clone()], vec!["r/app:1".into()], Digest::of(b"ctx"), "build/Dockerfile");
        req.build_args = vec![
            ("VERSION".into(), "1.4".into()),
            ("NPM_TOKEN".into(), "s3cret".into()),
            ("SSH_KEY".into(), "s3cret".into()),
            ("DB_PASS".into(), "s3cret".into()),
        ];
        req.target = Some("release".into());
        let subject = Digest::of(b"manifest");
        let base = ResolvedBase { reference: "127.0.0.1:5000/base:1".into(), digest: Digest::of(b"base") };
        let junk = ResolvedBase { reference: "no such reference!".into(), digest: Digest::of(b"x") };
        let bases: Vec<ResolvedBase> = std::iter::once(base).chain(std::iter::repeat_n(junk, 3)).collect();
        let p = Provenance {
            repository: "127.0.0.1:5000/app",
            subject: &subject,
            platform: &arm,
            agent: &"arm64-1".parse().unwrap(),
            agent_certificate_sha256: "ab12",
            agent_platforms: std::slice::from_ref(&arm),
            build: &"b-0123456789ab".parse().unwrap(),
            invocation: "j-0123456789ab/1".into(),
            request: &req,
            bases: &bases,
            started_ms: 1_700_000_000_000,
            finished_ms: 1_700_000_060_500,
        };
        let bytes = statement(&p);
        assert_eq!(statement(&p), bytes, "deterministic");
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["_type"], STATEMENT_TYPE);
        assert_eq!(v["predicateType"], SLSA_PROVENANCE_V1);
        assert_eq!(v["subject"][0]["digest"]["sha256"], subject.as_str().trim_start_matches("sha256:"));
        let def = &v["predicate"]["buildDefinition"];
        assert_eq!(def["internalParameters"]["builderPlatform"], "linux/arm64");
        assert_eq!(def["externalParameters"]["platform"], "linux/arm64");
        assert_eq!(def["internalParameters"]["agent"]["name"], "arm64-1");
        assert_eq!(def["externalParameters"]["dockerfile"], "build/Dockerfile");
        assert_eq!(def["externalParameters"]["target"], "release");
        assert_eq!(def["externalParameters"]["buildArgs"]["VERSION"], "1.4");
        assert_eq!(def["externalParameters"]["buildArgs"]["NPM_TOKEN"], "(not recorded)");
        assert_eq!(def["resolvedDependencies"][0]["uri"], "docker-image://127.0.0.1:5000/base:1");
        assert_eq!(def["resolvedDependencies"].as_array().map(Vec::len), Some(2), "malformed bases are left out");
        assert_eq!(def["externalParameters"]["buildArgs"]["SSH_KEY"], "(not recorded)");
        assert_eq!(def["externalParameters"]["buildArgs"]["DB_PASS"], "(not recorded)");
        assert_eq!(
            def["resolvedDependencies"][1]["digest"]["sha256"],
            Digest::of(b"ctx").as_str().trim_start_matches("sha256:")
        );
        let meta = &v["predicate"]["runDetails"]["metadata"];
        assert_eq!(meta["startedOn"], "2023-11-14T22:13:20Z");
        assert_eq!(meta["finishedOn"], "2023-11-14T22:14:20.5Z");
        assert_eq!(meta["invocationId"], "b-0123456789ab/j-0123456789ab/1");
    }
}

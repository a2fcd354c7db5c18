//! Ids, digests and platforms are checked when they are decoded, and checking them changed no
//! byte: each message is compared with a hand-built twin made of plain strings, which is what
//! the derived (unchecked) types used to put on the wire and in stored JSON.

use archfarm_shared::codec::{self, CodecError, DEFAULT_MAX_FRAME};
use archfarm_shared::protocol::{
    BuildRequest, ClientRequest, CoordinatorMessage, EnrollRequest, JobSpec, Registration,
};
use archfarm_shared::{AgentName, BuildId, Digest, JobId, Platform};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct PlainPlatform {
    os: String,
    arch: String,
    variant: Option<String>,
}

fn plain(os: &str, arch: &str, variant: Option<&str>) -> PlainPlatform {
    PlainPlatform { os: os.into(), arch: arch.into(), variant: variant.map(Into::into) }
}

/// [`JobSpec`] with every checked field a plain string.
#[derive(Serialize, Deserialize)]
struct PlainJobSpec {
    job: String,
    build: String,
    platform: PlainPlatform,
    context: String,
    dockerfile: String,
    build_args: Vec<(String, String)>,
    target: Option<String>,
    labels: Vec<(String, String)>,
    repository: String,
    attempt: u32,
    no_cache: bool,
    pull: bool,
    tests: Vec<Vec<String>>,
    test_target: Option<String>,
    cache_from: Vec<String>,
    inline_cache: bool,
    provenance: bool,
    read_scopes: Vec<String>,
    cache_to_max: Option<String>,
}

/// [`CoordinatorMessage`] up to `AssignJob`, in the same order (variants go by position).
#[derive(Serialize)]
#[allow(dead_code)]
enum PlainCoordinatorMessage {
    Registered { heartbeat_interval_ms: u64 },
    Refused { reason: String },
    AssignJob(Box<PlainJobSpec>),
}

/// [`ClientRequest`] up to `HasContext`.
#[derive(Serialize)]
#[allow(dead_code)]
enum PlainClientRequest {
    Hello { token: String },
    HasContext { digest: String },
}

#[derive(Serialize)]
#[allow(dead_code)]
enum PlainEnrollRequest {
    Join { token: String, name: String, csr_pem: String },
    Renew { csr_pem: String },
}

#[derive(Serialize)]
struct PlainEngine {
    version: String,
    api_version: String,
    image_store: String,
    buildkit_version: String,
}

#[derive(Serialize)]
struct PlainRegistration {
    platforms: Vec<PlainPlatform>,
    capacity: u32,
    engine: PlainEngine,
    agent_version: String,
    capabilities: PlainCapabilities,
    credentials_for: Vec<String>,
}

#[derive(Serialize)]
struct PlainCapabilities {
    x86_64_level: Option<u8>,
    cpu_features: Vec<String>,
    labels: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize)]
struct PlainRequirement {
    platform: Option<PlainPlatform>,
    key: String,
    value: String,
}

#[derive(Serialize)]
struct PlainBuildRequest {
    platforms: Vec<PlainPlatform>,
    tags: Vec<String>,
    context: String,
    dockerfile: String,
    build_args: Vec<(String, String)>,
    target: Option<String>,
    labels: Vec<(String, String)>,
    job_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    no_cache: bool,
    pull: bool,
    push: bool,
    tests: Vec<Vec<String>>,
    test_target: Option<String>,
    cache_from: Vec<String>,
    cache_to: Option<String>,
    inline_cache: bool,
    requirements: Vec<PlainRequirement>,
    optional_platforms: Vec<PlainPlatform>,
    provenance: bool,
    cache_max: bool,
}

const DIGEST: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

fn plain_spec() -> PlainJobSpec {
    PlainJobSpec {
        job: "j-00000000002a".into(),
        build: "b-0123456789ab".into(),
        platform: plain("linux", "arm", Some("v7")),
        context: DIGEST.into(),
        dockerfile: "Dockerfile".into(),
        build_args: vec![("A".into(), "1".into())],
        target: Some("final".into()),
        labels: vec![],
        repository: "127.0.0.1:5000/app".into(),
        attempt: 2,
        no_cache: true,
        pull: false,
        tests: vec![vec!["/bin/true".into()]],
        test_target: Some("test".into()),
        cache_from: vec!["r/a:c-linux-arm-v7".into()],
        inline_cache: true,
        provenance: true,
        read_scopes: vec!["127.0.0.1:5000/team/".into()],
        cache_to_max: None,
    }
}

fn spec() -> JobSpec {
    JobSpec {
        job: "j-00000000002a".parse::<JobId>().unwrap(),
        build: "b-0123456789ab".parse::<BuildId>().unwrap(),
        platform: "linux/arm/v7".parse().unwrap(),
        context: DIGEST.parse().unwrap(),
        dockerfile: "Dockerfile".into(),
        build_args: vec![("A".into(), "1".into())],
        target: Some("final".into()),
        labels: vec![],
        repository: "127.0.0.1:5000/app".into(),
        attempt: 2,
        no_cache: true,
        pull: false,
        tests: vec![vec!["/bin/true".into()]],
        test_target: Some("test".into()),
        cache_from: vec!["r/a:c-linux-arm-v7".into()],
        inline_cache: true,
        provenance: true,
        read_scopes: vec!["127.0.0.1:5000/team/".into()],
        cache_to_max: None,
    }
}

fn payload<T: Serialize>(msg: &T) -> Vec<u8> {
    codec::encode(msg, DEFAULT_MAX_FRAME).unwrap()
}

#[test]
fn checked_types_encode_to_the_same_bytes_as_plain_strings() {
    let assign = CoordinatorMessage::AssignJob(Box::new(spec()));
    assert_eq!(payload(&assign), payload(&PlainCoordinatorMessage::AssignJob(Box::new(plain_spec()))));

    let has = ClientRequest::HasContext { digest: DIGEST.parse().unwrap() };
    assert_eq!(payload(&has), payload(&PlainClientRequest::HasContext { digest: DIGEST.into() }));

    let enroll =
        EnrollRequest::Join { token: "t".into(), name: "arm64-1".parse::<AgentName>().unwrap(), csr_pem: "c".into() };
    let plain_enroll = PlainEnrollRequest::Join { token: "t".into(), name: "arm64-1".into(), csr_pem: "c".into() };
    assert_eq!(payload(&enroll), payload(&plain_enroll));

    let registration = Registration {
        platforms: vec!["linux/amd64".parse().unwrap(), "linux/arm/v6".parse().unwrap()],
        capacity: 3,
        engine: archfarm_shared::protocol::EngineFacts {
            version: "20.10.24".into(),
            api_version: "1.41".into(),
            image_store: "overlay2".into(),
            buildkit_version: String::new(),
        },
        agent_version: "0.1.0".into(),
        capabilities: archfarm_shared::capabilities::Capabilities {
            x86_64_level: Some(3),
            cpu_features: vec!["avx2".into()],
            labels: [("region".to_owned(), "eu".to_owned())].into(),
        },
        credentials_for: vec!["registry-1.docker.io".into()],
    };
    let plain_registration = PlainRegistration {
        platforms: vec![plain("linux", "amd64", None), plain("linux", "arm", Some("v6"))],
        capacity: 3,
        engine: PlainEngine {
            version: "20.10.24".into(),
            api_version: "1.41".into(),
            image_store: "overlay2".into(),
            buildkit_version: String::new(),
        },
        agent_version: "0.1.0".into(),
        capabilities: PlainCapabilities {
            x86_64_level: Some(3),
            cpu_features: vec!["avx2".into()],
            labels: [("region".to_owned(), "eu".to_owned())].into(),
        },
        credentials_for: vec!["registry-1.docker.io".into()],
    };
    assert_eq!(payload(&registration), payload(&plain_registration));
    // And the plain bytes decode to the checked message.
    assert_eq!(
        codec::decode::<CoordinatorMessage>(&payload(&PlainCoordinatorMessage::AssignJob(Box::new(plain_spec())))[4..])
            .unwrap(),
        assign
    );
}

#[test]
fn stored_json_is_unchanged_and_still_reads() {
    let request = BuildRequest {
        platforms: vec!["linux/amd64".parse().unwrap(), "linux/arm/v7".parse().unwrap()],
        tags: vec!["127.0.0.1:5000/app:1".into()],
        context: DIGEST.parse().unwrap(),
        dockerfile: "Dockerfile".into(),
        build_args: vec![],
        target: None,
        labels: vec![("k".into(), "v".into())],
        job_timeout_secs: None,
        idle_timeout_secs: None,
        no_cache: false,
        pull: false,
        push: true,
        tests: vec![],
        test_target: None,
        cache_from: vec![],
        cache_to: None,
        inline_cache: false,
        requirements: vec!["linux/arm/v7:region=eu".parse().unwrap()],
        optional_platforms: vec!["linux/arm/v7".parse().unwrap()],
        provenance: true,
        cache_max: false,
    };
    let plain_request = PlainBuildRequest {
        platforms: vec![plain("linux", "amd64", None), plain("linux", "arm", Some("v7"))],
        tags: vec!["127.0.0.1:5000/app:1".into()],
        context: DIGEST.into(),
        dockerfile: "Dockerfile".into(),
        build_args: vec![],
        target: None,
        labels: vec![("k".into(), "v".into())],
        job_timeout_secs: None,
        idle_timeout_secs: None,
        no_cache: false,
        pull: false,
        push: true,
        tests: vec![],
        test_target: None,
        cache_from: vec![],
        cache_to: None,
        inline_cache: false,
        requirements: vec![PlainRequirement {
            platform: Some(plain("linux", "arm", Some("v7"))),
            key: "region".into(),
            value: "eu".into(),
        }],
        optional_platforms: vec![plain("linux", "arm", Some("v7"))],
        provenance: true,
        cache_max: false,
    };
    let json = serde_json::to_string(&request).unwrap();
    assert_eq!(json, serde_json::to_string(&plain_request).unwrap());
    assert!(json.contains(r#"{"os":"linux","arch":"arm","variant":"v7"}"#), "{json}");
    assert_eq!(serde_json::from_str::<BuildRequest>(&json).unwrap(), request);

    let bad = json.replace(DIGEST, "sha256:../../etc");
    let err = serde_json::from_str::<BuildRequest>(&bad).unwrap_err();
    assert!(err.to_string().contains("invalid digest"), "{err}");
}

/// Decodes `bytes` as `T` and returns the message of the error it must be.
fn refusal<T: serde::de::DeserializeOwned + std::fmt::Debug>(bytes: &[u8]) -> String {
    match codec::decode::<T>(&bytes[4..]) {
        Err(e @ CodecError::Malformed(_)) => e.to_string(),
        other => panic!("expected a malformed-message error, got {other:?}"),
    }
}

#[test]
fn a_malformed_digest_is_a_decode_error_naming_it() {
    for bad in ["x", "sha256:../x", "sha256:", &format!("sha256:{}", "A".repeat(64))] {
        let frame = payload(&PlainClientRequest::HasContext { digest: bad.into() });
        let err = refusal::<ClientRequest>(&frame);
        assert!(err.starts_with("malformed message: invalid digest"), "{err}");
        assert!(err.contains(&format!("{bad:?}")), "{err}");
    }
}

#[test]
fn malformed_ids_and_names_are_decode_errors_naming_them() {
    let cases: Vec<(PlainJobSpec, &str)> = vec![
        (PlainJobSpec { job: "j-zz".into(), ..plain_spec() }, r#"invalid job id "j-zz""#),
        (PlainJobSpec { build: "../b".into(), ..plain_spec() }, r#"invalid build id "../b""#),
        (PlainJobSpec { build: "j-0123".into(), ..plain_spec() }, r#"invalid build id "j-0123""#),
        (PlainJobSpec { context: "sha256:../x".into(), ..plain_spec() }, r#"invalid digest "sha256:../x""#),
        (PlainJobSpec { platform: plain("linux", "amd 64", None), ..plain_spec() }, r#""amd 64" may hold only"#),
        (PlainJobSpec { platform: plain("linux/amd64", "v7", None), ..plain_spec() }, r#""linux/amd64" may hold only"#),
        (PlainJobSpec { platform: plain("linux", "arm", Some("")), ..plain_spec() }, "expected os/arch[/variant]"),
        (PlainJobSpec { platform: plain("", "", None), ..plain_spec() }, "expected os/arch[/variant]"),
    ];
    for (spec, want) in cases {
        let err = refusal::<CoordinatorMessage>(&payload(&PlainCoordinatorMessage::AssignJob(Box::new(spec))));
        assert!(err.contains(want), "{err} should contain {want}");
    }
    let frame = payload(&PlainEnrollRequest::Join { token: "t".into(), name: "../Root".into(), csr_pem: "c".into() });
    let err = refusal::<EnrollRequest>(&frame);
    assert!(err.contains(r#"invalid agent name "../Root""#), "{err}");
}

#[test]
fn platforms_decode_normalised() {
    let frame = payload(&PlainCoordinatorMessage::AssignJob(Box::new(PlainJobSpec {
        platform: plain("Linux", "aarch64", Some("v8")),
        ..plain_spec()
    })));
    let Ok(CoordinatorMessage::AssignJob(spec)) = codec::decode::<CoordinatorMessage>(&frame[4..]) else {
        panic!("a non-canonical but valid platform decodes");
    };
    assert_eq!(spec.platform, "linux/arm64".parse::<Platform>().unwrap());
}

#[tokio::test]
async fn a_stream_reader_reports_the_bad_value_instead_of_panicking() {
    let frame = payload(&PlainClientRequest::HasContext { digest: "x".into() });
    let mut r = frame.as_slice();
    let err = codec::read_msg::<_, ClientRequest>(&mut r, DEFAULT_MAX_FRAME).await.unwrap_err();
    // Not an I/O error: the coordinator closes the connection with this as the reason.
    assert!(matches!(err, CodecError::Malformed(_)), "{err}");
    assert!(err.to_string().contains(r#"invalid digest "x""#), "{err}");
    // A valid digest read the same way is usable as a file name.
    let ok = payload(&PlainClientRequest::HasContext { digest: DIGEST.into() });
    let Some(ClientRequest::HasContext { digest }) =
        codec::read_msg(&mut ok.as_slice(), DEFAULT_MAX_FRAME).await.unwrap()
    else {
        panic!("a valid digest decodes");
    };
    assert_eq!(digest.hex(), &DIGEST[7..]);
    let _: Digest = digest;
}

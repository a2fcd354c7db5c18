//! The message decoders on arbitrary payloads. Whatever decodes must encode to a payload that
//! decodes to the same message (not to the same bytes: a decoder may accept a non-minimal
//! varint that the encoder never writes), and must survive the JSON the coordinator stores.
//! Then every id in it is used the way the coordinator uses it: a digest's hex joined under a
//! directory must stay a single file name inside it; platforms, names and ids must display and
//! parse back to themselves. The input is decoded as it is, and laid over valid messages.
#![no_main]

use archfarm_shared::codec;
use archfarm_shared::protocol::{
    AgentMessage, BuildDetail, BuildEvent, BuildRequest, BuildSummary, ClientRequest, ClientResponse,
    CoordinatorMessage, EnrollRequest, JobOutcome, JobSpec, PlatformResult, PushedImage, Registration,
};
use archfarm_shared::{AgentName, BuildId, Digest, JobId, Platform};
use libfuzzer_sys::fuzz_target;
use std::fmt::{Debug, Display};
use std::path::{Component, Path};
use std::str::FromStr;
use std::sync::OnceLock;

/// Displays `id` and parses it back: the same value, as a user or a stored row would give it.
fn reparses<T: Display + FromStr + PartialEq + Debug>(id: &T)
where
    T::Err: Debug,
{
    let text = id.to_string();
    assert!(!text.is_empty());
    assert_eq!(&text.parse::<T>().expect("a decoded id parses"), id, "{text}");
}

fn digest(d: &Digest) {
    reparses(d);
    let hex = d.hex();
    assert_eq!(hex.len(), 64, "{d}");
    let dir = Path::new("/var/lib/archfarm/contexts");
    for name in [hex.to_owned(), format!("sha256-{hex}.tar"), format!(".partial-{hex}-1f")] {
        let path = dir.join(&name);
        assert_eq!(path.parent(), Some(dir), "{d} escapes {}", dir.display());
        assert!(matches!(path.components().last(), Some(Component::Normal(_))), "{d}");
    }
}

fn platform(p: &Platform) {
    reparses(p);
    for part in [Some(p.os()), Some(p.arch()), p.variant()].into_iter().flatten() {
        assert!(!part.is_empty() && !part.contains('/'), "{p:?}");
    }
    assert_eq!(&Platform::new(p.os(), p.arch(), p.variant()).expect("its own parts"), p);
    let _ = archfarm_shared::platform::list(std::slice::from_ref(p));
}

fn agent(a: &AgentName) {
    reparses(a);
    assert_eq!(a.as_str(), a.to_string());
}

fn build(b: &BuildId) {
    reparses(b);
}

fn job(j: &JobId) {
    reparses(j);
}

fn result(r: &PlatformResult) {
    platform(&r.platform);
    digest(&r.digest);
    agent(&r.agent);
    if let Some(a) = &r.attestation {
        digest(&a.subject);
        digest(&a.manifest.digest);
    }
}

fn summary(s: &BuildSummary) {
    build(&s.build);
    s.platforms.iter().for_each(platform);
    s.index.iter().for_each(digest);
}

fn detail(d: &BuildDetail) {
    summary(&d.summary);
    for j in &d.jobs {
        job(&j.job);
        platform(&j.platform);
        j.digest.iter().for_each(digest);
        j.agent.iter().for_each(agent);
        j.attempts.iter().for_each(|a| agent(&a.agent));
    }
}

fn event(e: &BuildEvent) {
    match e {
        BuildEvent::Accepted { build: b } => build(b),
        BuildEvent::Started { platform: p, agent: a } | BuildEvent::Retrying { platform: p, agent: a, .. } => {
            platform(p);
            agent(a);
        }
        BuildEvent::Log { platform: p, .. } | BuildEvent::PlatformLeftOut { platform: p, .. } => platform(p),
        BuildEvent::PlatformDone(r) => result(r),
        BuildEvent::PlatformFailed { platform: p, agent: a, .. } => {
            platform(p);
            a.iter().for_each(agent);
        }
        BuildEvent::Published { index, platforms, .. } => {
            digest(index);
            platforms.iter().for_each(result);
        }
        BuildEvent::Built { platforms } => platforms.iter().for_each(result),
        BuildEvent::Failed { .. } | BuildEvent::TagKept { .. } => {}
    }
}

fn client_request(r: &ClientRequest) {
    match r {
        ClientRequest::HasContext { digest: d } | ClientRequest::UploadContext { digest: d, .. } => digest(d),
        ClientRequest::UploadChunked { digest: d, chunks, .. } => {
            digest(d);
            chunks.iter().for_each(|c| digest(&c.digest));
        }
        ClientRequest::Build(b) => {
            digest(&b.context);
            b.platforms.iter().for_each(platform);
            b.requirements.iter().filter_map(|r| r.platform.as_ref()).for_each(platform);
        }
        ClientRequest::FetchBlob { digest: d } => digest(d),
        ClientRequest::InspectAgent { name } | ClientRequest::CreateJoinToken { name: Some(name), .. } => agent(name),
        ClientRequest::AgentDiskUsage { name } | ClientRequest::PruneAgents { name, .. } => name.iter().for_each(agent),
        ClientRequest::ShowBuild { build: b }
        | ClientRequest::WatchBuild { build: b }
        | ClientRequest::PublishBuild { build: b, .. }
        | ClientRequest::CancelBuild { build: b } => build(b),
        ClientRequest::RevokeAgent { name, .. } | ClientRequest::ChangeAgent { name, .. } => agent(name),
        ClientRequest::RetryBuild { build: b, platforms } => {
            build(b);
            platforms.iter().for_each(platform);
        }
        ClientRequest::Hello { .. }
        | ClientRequest::PruneBuilds
        | ClientRequest::ListAgents
        | ClientRequest::ListBuilds { .. }
        | ClientRequest::CreateJoinToken { name: None, .. }
        | ClientRequest::CreateClientToken { .. }
        | ClientRequest::RevokeClientToken { .. } => {}
    }
}

fn client_response(r: &ClientResponse) {
    match r {
        ClientResponse::Build(e) => event(e),
        ClientResponse::Agents(list) => list.iter().for_each(|a| {
            agent(&a.name);
            a.platforms.iter().for_each(platform);
        }),
        ClientResponse::Builds(list) => list.iter().for_each(summary),
        ClientResponse::BuildDetail(d) => detail(d),
        ClientResponse::AgentDetail(d) => {
            agent(&d.info.name);
            d.info.platforms.iter().for_each(platform);
            d.recent.iter().for_each(|a| {
                build(&a.build);
                platform(&a.platform);
            });
        }
        ClientResponse::AgentAnswers(answers) => answers.iter().for_each(|a| agent(&a.agent)),
        ClientResponse::Welcome { .. }
        | ClientResponse::Refused { .. }
        | ClientResponse::ContextPresent(_)
        | ClientResponse::ContextStored
        | ClientResponse::Error { .. }
        | ClientResponse::Done { .. }
        | ClientResponse::Token { .. }
        | ClientResponse::ChunksWanted(_)
        | ClientResponse::BlobFollows { .. } => {}
    }
}

fn agent_message(m: &AgentMessage) {
    match m {
        AgentMessage::Register(r) => r.platforms.iter().for_each(platform),
        AgentMessage::FetchContext { digest: d } | AgentMessage::StoreBlob { digest: d, .. } => digest(d),
        AgentMessage::JobFinished(JobOutcome::Pushed(image)) => {
            digest(&image.digest);
            image.bases.iter().for_each(|b| digest(&b.digest));
        }
        AgentMessage::JobFinished(JobOutcome::Failed(_))
        | AgentMessage::Heartbeat { .. }
        | AgentMessage::JobLog { .. }
        | AgentMessage::Draining
        | AgentMessage::Health { .. }
        | AgentMessage::Housekeeping(_) => {}
    }
}

fn coordinator_message(m: &CoordinatorMessage) {
    if let CoordinatorMessage::AssignJob(spec) = m {
        job(&spec.job);
        build(&spec.build);
        platform(&spec.platform);
        digest(&spec.context);
    }
}

fn round_trip<T>(data: &[u8], uses: fn(&T))
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Debug,
{
    if let Ok(msg) = codec::decode::<T>(data) {
        let frame = codec::encode(&msg, u32::MAX).expect("a decoded message encodes");
        assert_eq!(codec::decode::<T>(&frame[4..]).unwrap(), msg);
        let json = serde_json::to_string(&msg).expect("a decoded message is valid JSON");
        assert_eq!(serde_json::from_str::<T>(&json).expect("its JSON reads back"), msg);
        uses(&msg);
    }
}

fn every_decoder(data: &[u8]) {
    round_trip::<ClientRequest>(data, client_request);
    round_trip::<ClientResponse>(data, client_response);
    round_trip::<AgentMessage>(data, agent_message);
    round_trip::<CoordinatorMessage>(data, coordinator_message);
    round_trip::<EnrollRequest>(data, |r| {
        if let EnrollRequest::Join { name, .. } = r {
            agent(name)
        }
    });
}

fn payload<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    codec::encode(msg, u32::MAX).expect("a template encodes")[4..].to_vec()
}

/// Well-formed payloads full of ids. Random bytes almost never hold a valid digest (64 hex
/// characters behind the right length), so the input is also laid over one of these: its
/// mutations then land on ids, valid or not, as often as on anything else.
fn templates() -> &'static [Vec<u8>] {
    static TEMPLATES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let digest = Digest::of(b"context");
        let platforms: Vec<Platform> = vec!["linux/arm/v7".parse().unwrap(), "linux/amd64".parse().unwrap()];
        let agent: AgentName = "arm64-1".parse().unwrap();
        // Fixed, so that a crashing input replays the same.
        let build: BuildId = "b-0123456789ab".parse().unwrap();
        let base = archfarm_shared::provenance::ResolvedBase { reference: "r/base:1".into(), digest: digest.clone() };
        let pushed = PushedImage { digest: digest.clone(), media_type: "m".into(), size: 1, bases: vec![base] };
        let attestation = archfarm_shared::oci::Attestation {
            subject: digest.clone(),
            manifest: archfarm_shared::oci::Blob { media_type: "m".into(), digest: digest.clone(), size: 1 },
        };
        let result = PlatformResult {
            platform: platforms[0].clone(),
            digest: digest.clone(),
            agent: agent.clone(),
            duration_ms: 1,
            attestation: Some(attestation),
        };
        vec![
            payload(&ClientRequest::HasContext { digest: digest.clone() }),
            payload(&ClientRequest::RevokeAgent { name: agent.clone(), serial: None }),
            payload(&ClientRequest::ChangeAgent {
                name: agent.clone(),
                change: archfarm_shared::protocol::AgentChange::Drain,
            }),
            payload(&ClientRequest::ShowBuild { build: build.clone() }),
            payload(&ClientRequest::Build(Box::new(BuildRequest {
                job_timeout_secs: Some(3600),
                requirements: vec!["linux/amd64:region=eu".parse().unwrap()],
                ..BuildRequest::new(platforms.clone(), vec!["r/app:1".into()], digest.clone(), "Dockerfile")
            }))),
            payload(&ClientResponse::Build(BuildEvent::Published {
                index: digest.clone(),
                tags: vec![],
                platforms: vec![result],
            })),
            payload(&ClientResponse::Build(BuildEvent::Started {
                platform: platforms[1].clone(),
                agent: agent.clone(),
            })),
            payload(&AgentMessage::Register(Registration {
                platforms: platforms.clone(),
                capacity: 1,
                engine: Default::default(),
                agent_version: String::new(),
                capabilities: Default::default(),
                credentials_for: vec![],
            })),
            payload(&AgentMessage::JobFinished(JobOutcome::Pushed(pushed))),
            payload(&CoordinatorMessage::AssignJob(Box::new(JobSpec {
                job: "j-0123456789ab".parse().unwrap(),
                build,
                platform: platforms[0].clone(),
                context: digest,
                dockerfile: "Dockerfile".into(),
                build_args: vec![],
                target: None,
                labels: vec![],
                repository: "r/app".into(),
                attempt: 1,
                no_cache: false,
                pull: false,
                tests: vec![vec!["/bin/true".into()]],
                test_target: None,
                cache_from: vec!["r/app:cache-linux-arm-v7".into()],
                inline_cache: true,
                provenance: true,
                read_scopes: vec!["r/team/".into()],
                cache_to_max: Some("r/team/c:c-linux-amd64".into()),
            }))),
            payload(&EnrollRequest::Join { token: "t".into(), name: agent, csr_pem: String::new() }),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    every_decoder(data);
    // First byte: which template; second: where the rest of the input overwrites it.
    if let [which, at, patch @ ..] = data {
        let templates = templates();
        let mut payload = templates[usize::from(*which) % templates.len()].clone();
        let at = usize::from(*at) % payload.len();
        let end = payload.len().min(at + patch.len());
        payload.splice(at..end, patch.iter().copied());
        every_decoder(&payload);
    }
});

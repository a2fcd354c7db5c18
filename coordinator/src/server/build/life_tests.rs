//! A build's whole life in-process, on paused tokio time: submitted, run on scripted agents,
//! verified and published through a scripted registry, with the real farm, scheduler, state
//! database (SQLite in a temporary directory) and tag rules around them. Each test is a way a
//! publish goes wrong, and checks what the registry and the record hold afterwards.

use super::testing::join;
use crate::server::access::Principal;
use crate::server::live::Live;
use crate::server::ports::{AgentLink, Claim, ImageStore, Verifying};
use crate::server::state::Shared;
use archfarm_shared::oci::{self, Attestation, Blob, Child};
use archfarm_shared::protocol::{BuildEvent, BuildRequest, BuildState, JobFailure, JobSpec, PushedImage, Role};
use archfarm_shared::reference::ImageRef;
use archfarm_shared::{AgentName, BuildId, Digest};
use futures_util::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// An agent that builds for a second, then reports a push.
#[derive(Debug)]
struct PushingLink {
    name: AgentName,
    id: usize,
}

impl AgentLink for PushingLink {
    fn run_job<'a>(
        &'a self,
        spec: JobSpec,
        live: &'a Live,
        _idle: Duration,
    ) -> BoxFuture<'a, Result<PushedImage, JobFailure>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            live.log(&spec.platform, format!("#1 built on {}", self.name));
            let digest = Digest::of(format!("{}-{}-{}", spec.build, self.name, spec.attempt).as_bytes());
            Ok(PushedImage { digest, media_type: MANIFEST.into(), size: 500, bases: vec![] })
        })
    }

    fn is_open(&self) -> bool {
        true
    }

    fn id(&self) -> usize {
        self.id
    }

    fn close(&self, _code: u32, _reason: &str) {}
}

/// A registry that keeps its tags in memory. Publishing under a tag named in `refuse` fails;
/// under one named in `crash`, the index is written and the call never returns, as when the
/// coordinator dies between the write and its record.
#[derive(Debug, Default)]
struct ScriptedRegistry {
    tags: Mutex<HashMap<String, Digest>>,
    refuse: Mutex<HashSet<String>>,
    crash: Mutex<HashSet<String>>,
    crashed: tokio::sync::Notify,
    publishes: AtomicUsize,
}

impl ScriptedRegistry {
    fn tag(&self, tag: &str) -> Option<Digest> {
        self.tags.lock().unwrap().get(tag).cloned()
    }
}

impl ImageStore for ScriptedRegistry {
    fn verify<'a>(&'a self, _repo: &'a ImageRef, claim: Claim<'a>) -> Verifying<'a> {
        let Claim { platform, pushed, .. } = claim;
        let manifest = Blob { media_type: pushed.media_type.clone(), digest: pushed.digest.clone(), size: pushed.size };
        Box::pin(async move { Ok(Child { platform: platform.clone(), manifest }) })
    }

    fn attest<'a>(
        &'a self,
        _repo: &'a ImageRef,
        subject: &'a Child,
        statement: Vec<u8>,
    ) -> BoxFuture<'a, Result<Attestation, String>> {
        let manifest =
            Blob { media_type: MANIFEST.into(), digest: Digest::of(&statement), size: statement.len() as u64 };
        Box::pin(async move { Ok(Attestation { subject: subject.manifest.digest.clone(), manifest }) })
    }

    fn has_manifest<'a>(&'a self, _reference: &'a ImageRef) -> BoxFuture<'a, bool> {
        Box::pin(async { false })
    }

    fn copy<'a>(
        &'a self,
        _from: &'a ImageRef,
        _digest: &'a Digest,
        _to: &'a ImageRef,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    fn tag_target<'a>(&'a self, tag: &'a ImageRef) -> BoxFuture<'a, Result<Option<Digest>, String>> {
        Box::pin(async move { Ok(self.tag(&tag.whole())) })
    }

    fn publish_index<'a>(
        &'a self,
        tags: &'a [ImageRef],
        children: &'a [Child],
        attestations: &'a [Attestation],
    ) -> BoxFuture<'a, Result<Digest, String>> {
        Box::pin(async move {
            self.publishes.fetch_add(1, Ordering::SeqCst);
            let index = Digest::of(&oci::index_json_with(children, attestations).unwrap());
            for tag in tags.iter().map(ImageRef::whole) {
                if self.refuse.lock().unwrap().contains(&tag) {
                    return Err(format!("the registry refused {tag}: 500 Internal Server Error"));
                }
                self.tags.lock().unwrap().insert(tag.clone(), index.clone());
                if self.crash.lock().unwrap().contains(&tag) {
                    self.crashed.notify_one();
                    std::future::pending::<()>().await;
                }
            }
            Ok(index)
        })
    }
}

static NEXT_LINK: AtomicUsize = AtomicUsize::new(1000);

/// A coordinator's shared state over a temporary data directory, with agents for linux/amd64
/// and linux/arm64 and the scripted registry; `open` again over the same directory is a restart.
struct Rig {
    dir: tempfile::TempDir,
    registry: Arc<ScriptedRegistry>,
}

impl Rig {
    fn new() -> Rig {
        Rig { dir: tempfile::tempdir().unwrap(), registry: Arc::default() }
    }

    /// The coordinator, as it starts over the data directory, with its agents connected.
    fn open(&self) -> Arc<Shared> {
        let config = self.dir.path().join("coordinator.toml");
        let text = "listen = \"127.0.0.1:7000\"\nmin_free_space = \"0B\"\n\
                    [tls]\nca_cert = 'ca.pem'\ncert = 'c.pem'\nkey = 'c.key'\nclient_tokens = 'tokens'\n";
        std::fs::write(&config, text).unwrap();
        let mut shared = Shared::open(&archfarm_config::load(&config).unwrap()).unwrap();
        shared.registry = self.registry.clone();
        let context = Digest::of(b"context");
        std::fs::write(shared.contexts.files.path(&context), b"context").unwrap();
        for (name, platform) in [("amd", "linux/amd64"), ("arm", "linux/arm64")] {
            let name: AgentName = name.parse().unwrap();
            let link = PushingLink { name: name.clone(), id: NEXT_LINK.fetch_add(1, Ordering::SeqCst) };
            join(&shared.farm, &name, &[platform.parse().unwrap()], Arc::new(link));
        }
        Arc::new(shared)
    }
}

fn request(tags: &[&str]) -> BuildRequest {
    let platforms = vec!["linux/amd64".parse().unwrap(), "linux/arm64".parse().unwrap()];
    BuildRequest::new(platforms, tags.iter().map(|t| t.to_string()).collect(), Digest::of(b"context"), "Dockerfile")
}

fn admin() -> Principal {
    Principal { name: "admin".into(), role: Role::Admin, scopes: vec![] }
}

/// Submits `req` and follows it to its last event; also returns the `TagKept` reasons.
async fn build(shared: &Arc<Shared>, req: BuildRequest) -> (BuildId, BuildEvent, Vec<String>) {
    let (id, mut events) = super::submit(shared, &admin(), req).await.expect("the build is accepted");
    follow(id, &mut events).await
}

async fn follow(
    id: BuildId,
    events: &mut tokio::sync::broadcast::Receiver<BuildEvent>,
) -> (BuildId, BuildEvent, Vec<String>) {
    let mut kept = Vec::new();
    for _ in 0..1000 {
        // No timeout here: on paused time it would fire while the store's thread works. The test
        // runner bounds the wait.
        let event = events.recv().await.expect("the build ends with a last event");
        match event {
            BuildEvent::TagKept { reason } => kept.push(reason),
            BuildEvent::Published { .. } | BuildEvent::Failed { .. } | BuildEvent::Built { .. } => {
                return (id, event, kept)
            }
            _ => {}
        }
    }
    panic!("build {id} sent a thousand events without ending");
}

async fn state(shared: &Shared, id: &BuildId) -> BuildState {
    shared.store.detail(id).await.unwrap().unwrap().summary.state
}

const TAG: &str = "127.0.0.1:5000/app:1";
const LATEST: &str = "127.0.0.1:5000/app:latest";

#[tokio::test(start_paused = true)]
async fn a_build_runs_every_platform_and_publishes_one_index_under_every_tag() {
    let rig = Rig::new();
    let shared = rig.open();
    let (id, end, kept) = build(&shared, request(&[TAG, LATEST])).await;
    let BuildEvent::Published { index, tags, platforms } = end else { panic!("not published: {end:?}") };
    assert_eq!(tags, [TAG, LATEST]);
    assert_eq!(platforms.len(), 2, "both platforms are in the index");
    assert!(kept.is_empty(), "{kept:?}");
    assert_eq!(rig.registry.tag(TAG), Some(index.clone()));
    assert_eq!(rig.registry.tag(LATEST), Some(index.clone()));
    assert_eq!(shared.store.tag(TAG).await.unwrap().map(|r| r.digest), Some(index), "the write is recorded");
    assert_eq!(state(&shared, &id).await, BuildState::Published);
}

#[tokio::test(start_paused = true)]
async fn a_publish_that_fails_half_way_keeps_what_it_wrote_and_builds_publish_completes_it() {
    let rig = Rig::new();
    let shared = rig.open();
    rig.registry.refuse.lock().unwrap().insert(LATEST.into());
    let (id, end, _) = build(&shared, request(&[TAG, LATEST])).await;
    let BuildEvent::Failed { reason } = end else { panic!("published: {end:?}") };
    assert!(reason.contains(&format!("already written: {TAG}; the rest were not")), "{reason}");
    assert!(reason.contains(&format!("`archfarm builds publish {id}`")), "{reason}");
    let written = rig.registry.tag(TAG).expect("the first tag was written");
    assert_eq!(rig.registry.tag(LATEST), None);
    assert_eq!(shared.store.tag(TAG).await.unwrap().map(|r| r.digest), Some(written.clone()), "and recorded");
    assert_eq!(state(&shared, &id).await, BuildState::Failed);

    // The registry recovers: publishing again writes the rest, without rebuilding.
    rig.registry.refuse.lock().unwrap().clear();
    let published = super::republish::republish(&shared, &id, BuildState::Failed, false).await.unwrap();
    assert_eq!(published.index, written);
    assert_eq!(published.written, [TAG, LATEST]);
    assert_eq!(rig.registry.tag(LATEST), Some(written));
    assert_eq!(state(&shared, &id).await, BuildState::Published);
}

#[tokio::test(start_paused = true)]
async fn a_tag_another_writer_moved_is_kept_until_forced() {
    let rig = Rig::new();
    let shared = rig.open();
    let (_, first, _) = build(&shared, request(&[TAG])).await;
    assert!(matches!(first, BuildEvent::Published { .. }), "{first:?}");
    let theirs = Digest::of(b"pushed by someone else");
    rig.registry.tags.lock().unwrap().insert(TAG.into(), theirs.clone());

    let (id, end, kept) = build(&shared, request(&[TAG])).await;
    let BuildEvent::Failed { reason } = end else { panic!("published over another writer: {end:?}") };
    assert!(reason.contains("no tag was moved") && reason.contains("another writer moved it"), "{reason}");
    assert!(kept.is_empty(), "a build that moves no tag fails, and says why there: {kept:?}");
    assert_eq!(rig.registry.tag(TAG), Some(theirs), "the other writer's index stays");

    let forced = super::republish::republish(&shared, &id, BuildState::Failed, true).await.unwrap();
    assert_eq!(rig.registry.tag(TAG), Some(forced.index), "--force moves it");
}

#[tokio::test(start_paused = true)]
async fn a_restart_between_the_index_push_and_its_record_resumes_the_build_and_completes_the_tag() {
    let rig = Rig::new();
    let before = rig.open();
    let (_, first, _) = build(&before, request(&[TAG])).await;
    let BuildEvent::Published { index: old, .. } = first else { panic!("{first:?}") };

    // The next build's index reaches the registry; the coordinator dies before recording it.
    rig.registry.crash.lock().unwrap().insert(TAG.into());
    let (id, _events) = super::submit(&before, &admin(), request(&[TAG])).await.unwrap();
    rig.registry.crashed.notified().await;
    let new = rig.registry.tag(TAG).filter(|d| *d != old).expect("the second index was written");
    assert_eq!(before.store.tag(TAG).await.unwrap().map(|r| r.digest), Some(old.clone()), "not recorded");
    assert_eq!(state(&before, &id).await, BuildState::Publishing);

    // A new coordinator over the same data directory resumes it: its platforms stay verified.
    rig.registry.crash.lock().unwrap().clear();
    let after = rig.open();
    assert_eq!(after.store.unfinished().await.unwrap(), std::slice::from_ref(&id));
    let publishes = rig.registry.publishes.load(Ordering::SeqCst);
    let mut events = {
        super::resume(&after, &id).await.unwrap();
        after.live.get(&id).expect("running again").events.subscribe()
    };
    let (_, end, kept) = follow(id.clone(), &mut events).await;
    // The write was recorded as an intent before the push, and the registry serves its index:
    // the resumed build knows the index there is its own, and completes.
    let BuildEvent::Published { index, tags, .. } = end else { panic!("the tag is wedged: {end:?}") };
    assert!(kept.is_empty(), "{kept:?}");
    assert_eq!((index.clone(), tags), (new.clone(), vec![TAG.to_owned()]));
    assert_eq!(rig.registry.publishes.load(Ordering::SeqCst), publishes + 1, "the same bytes, written once more");
    assert_eq!(after.store.tag(TAG).await.unwrap().map(|r| (r.build, r.digest)), Some((id.clone(), new)));
    assert_eq!(after.store.tag_intent(TAG).await.unwrap(), None, "the intent is done");
    assert_eq!(state(&after, &id).await, BuildState::Published);
}

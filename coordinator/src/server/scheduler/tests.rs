//! The scheduler's rules: platform, level and label fit, load, affinity, standing, retries.

use super::*;
use std::collections::BTreeMap;

fn a(n: &str) -> AgentName {
    n.parse().unwrap()
}
fn p(s: &str) -> Platform {
    s.parse().unwrap()
}
fn j(n: u32) -> JobId {
    format!("j-{n:x}").parse().unwrap()
}
fn offer(platforms: &[&str], capacity: u32) -> Offer {
    Offer {
        platforms: platforms.iter().map(|x| p(x)).collect(),
        capacity,
        capabilities: Capabilities::default(),
        engine: Default::default(),
    }
}
fn w(platform: &str) -> Wants {
    Wants::platform(p(platform))
}
/// (job, agent) of each assignment.
fn pairs(got: Vec<Assignment>) -> Vec<(JobId, AgentName)> {
    got.into_iter().map(|x| (x.job, x.agent)).collect()
}
fn farm() -> Scheduler {
    let mut s = Scheduler::new();
    s.add_agent(a("amd-1"), offer(&["linux/amd64", "linux/386"], 2), Standing::Active);
    s.add_agent(a("amd-2"), offer(&["linux/amd64"], 1), Standing::Active);
    s.add_agent(a("arm-1"), offer(&["linux/arm64"], 1), Standing::Active);
    s
}

#[test]
fn jobs_go_only_to_agents_declaring_their_platform() {
    let mut s = farm();
    s.enqueue(j(1), w("linux/arm64"), vec![]);
    s.enqueue(j(2), w("linux/386"), vec![]);
    let got = pairs(s.dispatch());
    assert_eq!(got, vec![(j(1), a("arm-1")), (j(2), a("amd-1"))]);
}

#[test]
fn least_loaded_first_by_ratio_then_name() {
    let mut s = farm();
    for n in 1..=3 {
        s.enqueue(j(n), w("linux/amd64"), vec![]);
    }
    let agents: Vec<_> = s.dispatch().into_iter().map(|x| x.agent.to_string()).collect();
    // Both idle: name breaks the tie; then amd-1 (1/2) beats amd-2 (1/1).
    assert_eq!(agents, ["amd-1", "amd-2", "amd-1"]);
    assert_eq!(s.load(&a("amd-1")), Some((2, 2)));
}

#[test]
fn full_agents_leave_jobs_queued_until_a_slot_frees() {
    let mut s = farm();
    s.enqueue(j(1), w("linux/arm64"), vec![]);
    s.enqueue(j(2), w("linux/arm64"), vec![]);
    s.enqueue(j(3), w("linux/amd64"), vec![]);
    let first = s.dispatch();
    assert_eq!(first.len(), 2, "arm-1 has one slot; amd64 must not wait behind arm64");
    assert_eq!(s.queued(), 1);
    assert!(s.dispatch().is_empty());
    s.finish(&j(1));
    assert_eq!(pairs(s.dispatch()), vec![(j(2), a("arm-1"))]);
    s.finish(&j(1)); // late duplicate: ignored
    assert_eq!(s.load(&a("arm-1")), Some((1, 1)));
}

#[test]
fn unknown_platforms_are_refused_naming_missing_and_available() {
    let s = farm();
    assert!(s.check(&[w("linux/amd64"), w("linux/arm64")]).is_ok());
    let err = s.check(&[w("linux/amd64"), w("linux/s390x"), w("linux/arm/v7")]).unwrap_err();
    assert_eq!(err.missing, vec![p("linux/s390x"), p("linux/arm/v7")]);
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "no agent builds linux/s390x, linux/arm/v7 natively; the farm has linux/386, linux/amd64, linux/arm64."
        ),
        "{msg}"
    );
    let empty = Scheduler::new().check(&[w("linux/amd64")]).unwrap_err().to_string();
    assert!(empty.contains("the farm has none"), "{empty}");
}

#[test]
fn removing_an_agent_reports_running_and_stranded_jobs() {
    let mut s = farm();
    s.enqueue(j(1), w("linux/arm64"), vec![]);
    s.enqueue(j(2), w("linux/arm64"), vec![]);
    s.enqueue(j(3), w("linux/amd64"), vec![]);
    s.dispatch();
    let removed = s.remove_agent(&a("arm-1"));
    assert_eq!(removed, Removed { running: vec![j(1)] });
    assert_eq!(s.queued(), 1, "a stranded job stays queued: an agent may come back");
    assert!(s.check(&[w("linux/arm64")]).is_err());
    // The amd64 job is untouched.
    s.finish(&j(3));
    assert_eq!(s.load(&a("amd-1")), Some((0, 2)));
}

#[test]
fn re_registering_keeps_counting_running_jobs() {
    let mut s = farm();
    s.enqueue(j(1), w("linux/arm64"), vec![]);
    s.dispatch();
    s.add_agent(a("arm-1"), offer(&["linux/arm64"], 2), Standing::Active);
    assert_eq!(s.load(&a("arm-1")), Some((1, 2)));
}

#[test]
fn cancelled_jobs_leave_the_queue() {
    let mut s = Scheduler::new();
    s.add_agent(a("x"), offer(&["linux/amd64"], 1), Standing::Active);
    s.enqueue(j(1), w("linux/amd64"), vec![]);
    s.enqueue(j(2), w("linux/amd64"), vec![]);
    assert!(s.cancel(&j(2)));
    assert!(!s.cancel(&j(2)));
    assert_eq!(s.dispatch().len(), 1);
    assert_eq!(s.queued(), 0);
}

#[test]
fn quarantined_and_draining_agents_get_no_jobs() {
    let mut s = farm();
    s.set_standing(&a("arm-1"), Standing::Quarantined("wrong platform".into()));
    assert!(!s.serves(&w("linux/arm64")));
    assert!(s.check(&[w("linux/arm64")]).is_err(), "a quarantined agent does not count");
    s.enqueue(j(1), w("linux/arm64"), vec![]);
    assert!(s.dispatch().is_empty());
    s.set_standing(&a("arm-1"), Standing::Active);
    assert_eq!(s.dispatch().len(), 1);

    s.set_standing(&a("amd-1"), Standing::Draining);
    s.enqueue(j(2), w("linux/amd64"), vec![]);
    assert_eq!(pairs(s.dispatch()), vec![(j(2), a("amd-2"))]);
    assert_eq!(s.standing(&a("amd-1")), Some(&Standing::Draining));

    // Drained while running: the job keeps its slot until it finishes; nothing new comes.
    s.set_standing(&a("amd-1"), Standing::Active);
    s.enqueue(j(3), w("linux/amd64"), vec![]);
    assert_eq!(pairs(s.dispatch()), vec![(j(3), a("amd-1"))]);
    s.set_standing(&a("amd-1"), Standing::Drained);
    s.finish(&j(2));
    s.enqueue(j(4), w("linux/amd64"), vec![]);
    assert_eq!(pairs(s.dispatch()), vec![(j(4), a("amd-2"))]);
    assert_eq!(s.load(&a("amd-1")), Some((1, 2)));
    s.finish(&j(3));
    assert_eq!(s.load(&a("amd-1")), Some((0, 2)));
    assert_eq!(s.set_standing(&a("amd-1"), Standing::Active), Some(Standing::Drained), "returns what it was");
    s.enqueue(j(5), w("linux/amd64"), vec![]);
    assert_eq!(pairs(s.dispatch()), vec![(j(5), a("amd-1"))]);
}

#[test]
fn retries_avoid_earlier_agents_unless_no_other_declares_the_platform() {
    let mut s = farm();
    s.enqueue(j(1), w("linux/amd64"), vec![a("amd-1")]);
    assert_eq!(pairs(s.dispatch()), vec![(j(1), a("amd-2"))]);
    // amd-2 is busy now: the retry waits for it rather than going back to amd-1.
    s.enqueue(j(2), w("linux/amd64"), vec![a("amd-1")]);
    assert!(s.dispatch().is_empty());
    // arm-1 is the only arm64 agent: avoiding it would strand the job.
    s.enqueue(j(3), w("linux/arm64"), vec![a("arm-1")]);
    assert_eq!(pairs(s.dispatch()), vec![(j(3), a("arm-1"))]);
}

fn with_caps(platforms: &[&str], capacity: u32, level: Option<u8>, labels: &[(&str, &str)]) -> Offer {
    let mut o = offer(platforms, capacity);
    o.capabilities.x86_64_level = level;
    o.capabilities.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
    o
}

fn wants(platform: &str, require: &[&str], warm: Option<&str>) -> Wants {
    let reqs: Vec<archfarm_shared::capabilities::Requirement> = require.iter().map(|r| r.parse().unwrap()).collect();
    Wants::of(&p(platform), &reqs, &[], warm.map(str::to_owned))
}

#[test]
fn an_amd64_level_goes_only_to_agents_of_that_level_or_above() {
    let mut s = Scheduler::new();
    s.add_agent(a("amd-v2"), with_caps(&["linux/amd64"], 4, Some(2), &[]), Standing::Active);
    s.add_agent(a("amd-v4"), with_caps(&["linux/amd64"], 1, Some(4), &[]), Standing::Active);
    s.enqueue(j(1), w("linux/amd64/v3"), vec![]);
    s.enqueue(j(2), w("linux/amd64/v3"), vec![]);
    s.enqueue(j(3), w("linux/amd64"), vec![]);
    // amd-v2 is idle with 4 slots, but only amd-v4 reaches v3; j2 waits for it.
    assert_eq!(pairs(s.dispatch()), vec![(j(1), a("amd-v4")), (j(3), a("amd-v2"))]);
    assert_eq!(s.queued_by_platform(), vec![(p("linux/amd64/v3"), 1)]);
    assert!(s.check(&[w("linux/amd64/v4")]).is_ok());
    s.set_standing(&a("amd-v4"), Standing::Drained);
    let err = s.check(&[w("linux/amd64/v3"), w("linux/amd64/v2")]).unwrap_err();
    assert!(err.missing.is_empty());
    let msg = err.to_string();
    assert!(msg.starts_with("no agent fits linux/amd64/v3: the linux/amd64 agents have amd-v2: x86-64-v2."), "{msg}");
    assert_eq!(err.unmet.len(), 1, "v2 is met: {msg}");
}

#[test]
fn required_labels_and_cpu_features_limit_the_agents_per_platform() {
    let mut s = Scheduler::new();
    s.add_agent(a("amd-eu"), with_caps(&["linux/amd64"], 1, Some(3), &[("region", "eu")]), Standing::Active);
    s.add_agent(a("amd-us"), with_caps(&["linux/amd64"], 1, Some(3), &[("region", "us")]), Standing::Active);
    let mut arm = with_caps(&["linux/arm64"], 1, None, &[("region", "us")]);
    arm.capabilities.cpu_features = vec!["sve2".into()];
    s.add_agent(a("arm-us"), arm, Standing::Active);

    s.enqueue(j(1), wants("linux/amd64", &["region=us"], None), vec![]);
    s.enqueue(j(2), wants("linux/arm64", &["linux/arm64:cpu=sve2", "linux/amd64:region=eu"], None), vec![]);
    assert_eq!(pairs(s.dispatch()), vec![(j(1), a("amd-us")), (j(2), a("arm-us"))]);

    let err = s
        .check(&[wants("linux/amd64", &["region=ap", "disk=nvme"], None), wants("linux/riscv64", &[], None)])
        .unwrap_err();
    assert_eq!(err.missing, vec![p("linux/riscv64")]);
    let msg = err.to_string();
    assert!(msg.contains("no agent builds linux/riscv64 natively"), "{msg}");
    assert!(
        msg.contains(
            "no agent fits linux/amd64 with region=ap disk=nvme: the linux/amd64 agents have \
             amd-eu: x86-64-v3 region=eu; amd-us: x86-64-v3 region=us."
        ),
        "{msg}"
    );
}

fn two_warmable() -> Scheduler {
    let mut s = Scheduler::with_affinity(Some(0.5));
    s.add_agent(a("amd-1"), offer(&["linux/amd64"], 2), Standing::Active);
    s.add_agent(a("amd-2"), offer(&["linux/amd64"], 2), Standing::Active);
    s
}

#[test]
fn affinity_prefers_the_warm_agent_within_the_margin_and_says_why() {
    let mut s = two_warmable();
    s.enqueue(j(1), wants("linux/amd64", &[], Some("app")), vec![]);
    s.enqueue(j(2), wants("linux/amd64", &[], Some("web")), vec![]);
    let got = s.dispatch();
    assert_eq!(pairs(got.clone()), vec![(j(1), a("amd-1")), (j(2), a("amd-2"))]);
    assert_eq!(got[0].reason, "least loaded (0/2 running)");
    s.finish(&j(1));
    s.finish(&j(2));
    // "web" sorts nowhere special: it goes back to amd-2 though amd-1 wins ties by name.
    s.enqueue(j(3), wants("linux/amd64", &[], Some("web")), vec![]);
    let got = s.dispatch();
    assert_eq!(pairs(got.clone()), vec![(j(3), a("amd-2"))]);
    assert!(
        got[0].reason.starts_with(
            "warm cache: it ran this repository's Dockerfile for linux/amd64 last (0/2 running; amd-1 has 0/2 running)"
        ),
        "{}",
        got[0].reason
    );
    // amd-2 at 1/2 is within 0.5 of amd-1 at 0/2: "web" still goes there.
    s.enqueue(j(4), wants("linux/amd64", &[], Some("web")), vec![]);
    assert_eq!(pairs(s.dispatch()), vec![(j(4), a("amd-2"))]);
    // amd-2 is full now: "web" goes to the least loaded, which says why not the warm one.
    s.enqueue(j(5), wants("linux/amd64", &[], Some("web")), vec![]);
    let got = s.dispatch();
    assert_eq!(pairs(got.clone()), vec![(j(5), a("amd-1"))]);
    assert_eq!(got[0].reason, "least loaded (0/2 running); amd-2 has the warm cache but cannot take it now");
}

#[test]
fn affinity_yields_to_load_beyond_the_margin_and_is_off_without_one() {
    let mut s = Scheduler::with_affinity(Some(0.25));
    s.add_agent(a("amd-1"), offer(&["linux/amd64"], 2), Standing::Active);
    s.add_agent(a("amd-2"), offer(&["linux/amd64"], 4), Standing::Active);
    s.enqueue(j(1), wants("linux/amd64", &[], Some("app")), vec![]);
    assert_eq!(pairs(s.dispatch()), vec![(j(1), a("amd-1"))]);
    // amd-1 runs 1/2 = 0.5, amd-2 0/4: 0.5 above, beyond 0.25.
    s.enqueue(j(2), wants("linux/amd64", &[], Some("app")), vec![]);
    let got = s.dispatch();
    assert_eq!(pairs(got.clone()), vec![(j(2), a("amd-2"))]);
    assert_eq!(
        got[0].reason,
        "least loaded (0/4 running); amd-1 has the warm cache but is busier by more than the margin 0.25 (1/2 running)"
    );

    let mut off = Scheduler::with_affinity(None);
    off.add_agent(a("amd-1"), offer(&["linux/amd64"], 2), Standing::Active);
    off.add_agent(a("amd-2"), offer(&["linux/amd64"], 2), Standing::Active);
    off.enqueue(j(1), wants("linux/amd64", &[], Some("web")), vec![]);
    off.enqueue(j(2), wants("linux/amd64", &[], Some("app")), vec![]);
    off.dispatch();
    off.finish(&j(1));
    off.finish(&j(2));
    off.enqueue(j(3), wants("linux/amd64", &[], Some("app")), vec![]);
    assert_eq!(pairs(off.dispatch()), vec![(j(3), a("amd-1"))], "without affinity the name breaks the tie");
    assert!(Scheduler::with_affinity(Some(f64::NAN)).affinity.is_none());
}

#[test]
fn affinity_never_overrides_fit_or_retries_and_forgets_old_keys() {
    let mut s = two_warmable();
    s.enqueue(j(1), wants("linux/amd64", &[], Some("app")), vec![]);
    s.dispatch();
    s.finish(&j(1));
    // The warm agent failed the last attempt: the retry avoids it.
    s.enqueue(j(2), wants("linux/amd64", &[], Some("app")), vec![a("amd-1")]);
    let got = s.dispatch();
    assert_eq!(pairs(got.clone()), vec![(j(2), a("amd-2"))]);
    assert!(got[0].reason.ends_with("; avoiding amd-1 (earlier attempts)"), "{}", got[0].reason);
    s.finish(&j(2));
    for n in 0..(WARM_KEYS as u32 + 10) {
        s.enqueue(j(100 + n), wants("linux/amd64", &[], Some(&format!("k{n}"))), vec![]);
        s.dispatch();
        s.finish(&j(100 + n));
    }
    assert!(s.warm.len() <= WARM_KEYS, "{}", s.warm.len());
}

fn on_store(platforms: &[&str], store: &str) -> Offer {
    let mut o = offer(platforms, 1);
    o.engine = archfarm_shared::protocol::EngineFacts {
        image_store: store.into(),
        ..archfarm_shared::protocol::EngineFacts::of_version(if store == "containerd" { "26.1.5" } else { "20.10.24" })
    };
    o
}

#[test]
fn a_job_that_needs_an_engine_ability_goes_only_where_the_engine_has_it() {
    use archfarm_shared::engine_needs::EngineNeed;
    let mut s = Scheduler::new();
    s.add_agent(a("old"), on_store(&["linux/amd64"], "overlay2"), Standing::Active);
    s.add_agent(a("new"), on_store(&["linux/amd64"], "containerd"), Standing::Active);
    s.add_agent(a("arm-old"), on_store(&["linux/arm64"], "overlay2"), Standing::Active);
    let max = |platform: &str| Wants::of(&p(platform), &[], &[EngineNeed::CacheOfEveryStage], None);
    // The least-loaded agent would be either; only "new" exports a cache of every stage.
    s.enqueue(j(1), max("linux/amd64"), vec![]);
    assert_eq!(pairs(s.dispatch()), vec![(j(1), a("new"))]);
    // "new" is busy: the next such job waits for it rather than going to "old".
    s.enqueue(j(2), max("linux/amd64"), vec![]);
    assert!(s.dispatch().is_empty());
    assert!(s.check(&[max("linux/amd64")]).is_ok());
    // No arm64 engine can: refused at once, naming what each lacks and who could.
    let err = s.check(&[max("linux/amd64"), max("linux/arm64")]).unwrap_err().to_string();
    assert!(err.contains("no agent for linux/arm64 can run this build"), "{err}");
    assert!(err.contains("--cache-to mode=max needs the containerd image store"), "{err}");
    assert!(err.contains("arm-old has Docker Engine 20.10.24 on the overlay2 store"), "{err}");
    assert!(err.contains("agents whose engine can: new (linux/amd64)"), "{err}");
    assert!(!err.contains("linux/amd64 can run"), "amd64 has an agent that can: {err}");
}

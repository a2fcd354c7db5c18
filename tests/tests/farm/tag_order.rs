//! Tags never move backwards: of two builds racing for a tag the later submission wins, and
//! publishing an old build again does not move a tag back without `--force`. Each checked
//! through the registry's HTTP API.

use archfarm_tests::*;
use std::time::Duration;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The digest `repo:tag` resolves to in the registry.
fn resolves_to(farm: &Farm, repo: &str, tag: &str) -> String {
    let (status, digest, _) = farm.registry_get(&format!("/v2/{repo}/manifests/{tag}"), INDEX);
    assert_eq!(status, 200, "{repo}:{tag}");
    digest.unwrap()
}

/// The index a build published, from `builds show --format json`.
fn index_of(farm: &Farm, build: &str) -> String {
    farm.build_record(build)["index"].as_str().unwrap_or_else(|| panic!("build {build} has no index")).to_owned()
}

#[test]
fn of_two_builds_racing_for_a_tag_the_later_submission_wins_whichever_finishes_last() {
    let farm = Farm::start(&[AgentSpec { name: "amd64-1", native: None, capacity: 2 }]);
    let repo = farm.repo("race");
    let tag = format!("{repo}:latest");
    // The earlier submission is slow; the later one finishes first.
    let slow = slow_context(4);
    let earlier = farm.spawn_build("linux/amd64", &[&tag, &format!("{repo}:earlier")], slow.path());
    let first = farm.newest_build();
    let fast = context(PER_ARCH_DOCKERFILE);
    let out = farm.build("linux/amd64", &[&tag], fast.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let later = farm.newest_build();
    assert_ne!(first, later);
    let out = wait_output(earlier, Duration::from_secs(180));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("points at build {later}, submitted later; kept")), "{}", text(&out));

    // latest stays with the later submission; the earlier build's own tag was written.
    let path = repo.split_once('/').unwrap().1;
    assert_eq!(resolves_to(&farm, path, "latest"), index_of(&farm, &later));
    assert_eq!(resolves_to(&farm, path, "earlier"), index_of(&farm, &first));
}

#[test]
fn publishing_an_old_build_again_does_not_move_its_tag_back_without_force() {
    let farm = Farm::start(&[AgentSpec::amd64()]);
    let repo = farm.repo("republish");
    let path = repo.split_once('/').unwrap().1;
    let tag = format!("{repo}:1");
    let ctx = context(PER_ARCH_DOCKERFILE);
    let out = farm.build("linux/amd64", &[&tag], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let old = farm.newest_build();
    let changed = context(&format!("{PER_ARCH_DOCKERFILE}LABEL release=two\n"));
    let out = farm.build("linux/amd64", &[&tag], changed.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let new = farm.newest_build();
    let newest = resolves_to(&farm, path, "1");
    assert_eq!(newest, index_of(&farm, &new));

    let out = farm.archfarm(&["builds", "publish", &old]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("submitted later; kept") && text(&out).contains("--force"), "{}", text(&out));
    assert_eq!(resolves_to(&farm, path, "1"), newest, "the tag did not move back");

    let out = farm.archfarm(&["builds", "publish", &old, "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(resolves_to(&farm, path, "1"), index_of(&farm, &old), "--force moves it");
    // Publishing the newer build again, now that the tag points at the older one: refused too.
    let out = farm.archfarm(&["builds", "publish", &new]);
    assert!(!out.status.success() && text(&out).contains(&format!("now points at build {old}")), "{}", text(&out));
}

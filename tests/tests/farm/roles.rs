//! Roles and scopes: a build token builds to its own repositories and sees only its own
//! builds; every admin operation is refused to it. Token-file lines from before roles are
//! admins, with a warning.

use archfarm_shared::pki::token_hash;
use archfarm_shared::protocol::{BuildEvent, BuildRequest, ClientRequest, ClientResponse};
use archfarm_tests::*;
use std::process::Output;
use std::time::Duration;

fn token(farm: &Farm, args: &[&str]) -> String {
    let out = farm.archfarm(args);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn as_token(farm: &Farm, token: &str, args: &[&str]) -> Output {
    let mut cmd = farm.command(args);
    cmd.env("ARCHFARM_TOKEN", token);
    run_bounded(cmd, Duration::from_secs(300))
}

fn build_as(farm: &Farm, token: &str, tag: &str, ctx: &std::path::Path) -> Output {
    let ctx = ctx.to_str().unwrap();
    as_token(farm, token, &["build", "--platform", "linux/amd64", "--push", "--progress", "plain", "-t", tag, ctx])
}

#[test]
fn a_build_token_builds_in_its_scope_sees_its_own_builds_and_is_refused_every_admin_operation() {
    let mut farm = Farm::start(&[AgentSpec::amd64()]);
    let scope = format!("{}/team/", farm.registry);
    let ci = token(&farm, &["tokens", "create", "ci", "--role", "build", "--scope", &scope]);
    let ctx = context(PER_ARCH_DOCKERFILE);

    // The admin's build, which the build token must not see or touch.
    let out = farm.build("linux/amd64", &[&format!("{}:1", farm.repo("admin-app"))], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let admins = farm.newest_build();

    // Inside its scope: built and pushed, recorded as its own.
    let out = build_as(&farm, &ci, &format!("{}:1", farm.repo("team/app")), ctx.path());
    assert!(out.status.success(), "{}", text(&out));
    let listed = text(&as_token(&farm, &ci, &["builds", "ls"]));
    assert!(listed.contains("OWNER") && listed.contains(" ci ") && !listed.contains(&admins), "{listed}");
    let all = text(&farm.archfarm(&["builds", "ls"]));
    assert!(all.contains(&admins) && all.contains(" admin ") && all.contains(" ci "), "{all}");

    // Outside it, or beside it: refused before anything runs, and nothing reaches the registry.
    for outside in [format!("{}:1", farm.repo("other/app")), format!("{}:1", farm.repo("teamx/app"))] {
        let out = build_as(&farm, &ci, &outside, ctx.path());
        assert!(!out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("may only build to repositories under"), "{}", text(&out));
    }
    let (_, _, catalog) = farm.registry_get("/v2/_catalog", "application/json");
    let catalog = String::from_utf8_lossy(&catalog);
    assert!(catalog.contains("team/app") && !catalog.contains("other/app") && !catalog.contains("teamx"), "{catalog}");

    // Every admin operation: refused, and nothing changed.
    let admin_ops: &[&[&str]] = &[
        &["agents", "token", "create"],
        &["agents", "revoke", "amd64-1"],
        &["agents", "prune", "amd64-1", "--force"],
        // Each makes agents walk their disks: not for every token holder to cause at will.
        &["agents", "du"],
        &["agents", "du", "amd64-1"],
        &["agents", "inspect", "amd64-1"],
        &["agents", "drain", "amd64-1"],
        &["agents", "undrain", "amd64-1"],
        &["agents", "unquarantine", "amd64-1"],
        &["tokens", "create", "mine", "--role", "admin"],
        &["tokens", "create", "mine2"],
        &["tokens", "revoke", "ci"],
        &["builds", "prune"],
    ];
    for args in admin_ops {
        let out = as_token(&farm, &ci, args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("needs an admin token"), "{args:?}: {}", text(&out));
    }
    // The admin's build is unknown to it, whatever it asks.
    for verb in ["show", "publish", "cancel", "watch"] {
        let out = as_token(&farm, &ci, &["builds", verb, &admins]);
        assert!(!out.status.success(), "{verb}: {}", text(&out));
        assert!(text(&out).contains(&format!("no build {admins}")), "{verb}: {}", text(&out));
    }
    // The agent is still connected, and the token still works.
    let agents = text(&as_token(&farm, &ci, &["agents", "ls"]));
    assert!(agents.contains("amd64-1"), "{agents}");
    farm.proc("coordinator").wait_for_log("refused: revoking an agent needs an admin token", Duration::from_secs(10));
}

#[test]
fn a_token_file_line_from_before_roles_is_an_admin_with_a_warning() {
    let mut farm = Farm::start(&[]);
    let old = "an-old-token-from-before-roles-0123456789";
    let file = farm.dir.path().join("ca/client-tokens");
    let mut lines = std::fs::read_to_string(&file).unwrap();
    assert!(lines.contains("role=admin"), "ca init writes the role: {lines}");
    lines.push_str(&format!("{}  # pipeline, before roles\n", token_hash(old)));
    std::fs::write(&file, lines).unwrap();
    let out = as_token(&farm, old, &["agents", "token", "create"]);
    assert!(out.status.success(), "{}", text(&out));
    farm.proc("coordinator").wait_for_log("without role= is read as an admin", Duration::from_secs(10));
}

#[test]
fn revoking_a_client_token_closes_the_connections_it_holds_open() {
    let mut farm = Farm::start(&[]);
    let ci = token(&farm, &["tokens", "create", "ci", "--role", "build"]);
    let remote = archfarm_client::Remote {
        coordinator: farm.coordinator.clone(),
        token: ci,
        ca: farm.dir.path().join("ca/ca.pem"),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let conn = runtime.block_on(archfarm_client::Connection::open(&remote)).unwrap();
    let ls = ClientRequest::ListBuilds { limit: 10 };
    assert!(runtime.block_on(conn.call(&ls)).is_ok(), "the connection works before");

    let out = farm.archfarm(&["tokens", "revoke", "ci"]);
    assert!(out.status.success(), "{}", text(&out));
    // The connection opened before the revocation no longer serves the token.
    let after = runtime.block_on(async {
        for _ in 0..50 {
            if let Err(e) = conn.call(&ls).await {
                return Some(format!("{e:#}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    });
    let why = after.expect("the revoked token's connection is closed within 5 s");
    assert!(why.contains("the client token was revoked"), "{why}");
    farm.proc("coordinator").wait_for_log("client token revoked: closing its session", Duration::from_secs(10));
}

#[test]
fn a_context_belongs_to_the_token_that_uploaded_it_and_its_digest_alone_builds_nothing() {
    let farm = Farm::start(&[AgentSpec::amd64()]);
    let scope = |team: &str| format!("{}/{team}/", farm.registry);
    let a = token(&farm, &["tokens", "create", "team-a", "--role", "build", "--scope", &scope("a")]);
    let b = token(&farm, &["tokens", "create", "team-b", "--role", "build", "--scope", &scope("b")]);
    let ctx = context(PER_ARCH_DOCKERFILE);
    let out = build_as(&farm, &a, &format!("{}:1", farm.repo("a/app")), ctx.path());
    assert!(out.status.success(), "{}", text(&out));

    // Team b knows the digest of team a's context (provenance publishes it), and nothing else.
    let digest = archfarm_client::context::pack(ctx.path(), None, 1 << 30).unwrap().plan.digest;
    let remote = archfarm_client::Remote {
        coordinator: farm.coordinator.clone(),
        token: b.clone(),
        ca: farm.dir.path().join("ca/ca.pem"),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (present, built) = runtime.block_on(async {
        let conn = archfarm_client::Connection::open(&remote).await.unwrap();
        let present = conn.call(&ClientRequest::HasContext { digest: digest.clone() }).await.unwrap();
        let tag = format!("{}:1", farm.repo("b/app"));
        let req = BuildRequest::new(vec!["linux/amd64".parse().unwrap()], vec![tag], digest.clone(), "Dockerfile");
        let built = conn.call(&ClientRequest::Build(Box::new(req))).await.unwrap();
        (present, built)
    });
    assert_eq!(present, ClientResponse::ContextPresent(false), "another team's context is not there for it");
    let ClientResponse::Build(BuildEvent::Failed { reason }) = built else { panic!("built from a digest: {built:?}") };
    assert!(reason.contains(&format!("build context {digest} is not on the coordinator; upload it first")), "{reason}");
    let (_, _, catalog) = farm.registry_get("/v2/_catalog", "application/json");
    assert!(!String::from_utf8_lossy(&catalog).contains("b/app"), "nothing was pushed for it");

    // With the source in hand, team b uploads it (only the chunk list travels) and builds.
    let out = build_as(&farm, &b, &format!("{}:1", farm.repo("b/app")), ctx.path());
    assert!(out.status.success(), "{}", text(&out));
}

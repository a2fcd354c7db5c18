//! The agent's side of a job, driven by a scripted coordinator over real QUIC and mutual TLS
//! (the real coordinator never sends such a job, so it cannot provoke this path).

use archfarm_shared::codec::{self, DEFAULT_MAX_FRAME};
use archfarm_shared::protocol::{AgentMessage, CoordinatorMessage, FailureKind, JobOutcome, JobSpec};
use archfarm_shared::{tls, BuildId, Digest, JobId};
use archfarm_tests::*;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_a_job_for_a_platform_it_did_not_declare() {
    tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    run_ok(Command::new(bin("archfarm")).args(["ca", "init", "--dir"]).arg(&ca));
    run_ok(Command::new(bin("archfarm")).args(["ca", "issue-agent", "amd64-1", "--dir"]).arg(&ca));
    let read = |f: &str| std::fs::read_to_string(ca.join(f)).unwrap();
    let server = tls::server_config(
        &read("ca.pem"),
        &read("coordinator.pem"),
        &read("coordinator.key"),
        tls::Transport::default(),
        false,
    )
    .unwrap();
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let port = endpoint.local_addr().unwrap().port();

    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "coordinator = \"127.0.0.1:{port}\"\nserver_name = \"localhost\"\ncache_dir = \"cache\"\n[tls]\nca_cert = \"ca/ca.pem\"\ncert = \"ca/amd64-1.pem\"\nkey = \"ca/amd64-1.key\"\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin("archfarm-agent"));
    cmd.arg("--config").arg(&config);
    let agent = Proc::start("agent", cmd, dir.path().join("agent.log"));

    let conn = tokio::time::timeout(Duration::from_secs(20), async { endpoint.accept().await.unwrap().await.unwrap() })
        .await
        .expect("the agent dials out");
    assert_eq!(
        tls::peer_certificate(&conn).unwrap().map(|c| c.name).as_deref(),
        Some("amd64-1"),
        "name from the certificate"
    );
    let (mut control, mut control_rx) = conn.accept_bi().await.unwrap();
    let registration = match codec::expect_msg::<_, AgentMessage>(&mut control_rx, DEFAULT_MAX_FRAME).await.unwrap() {
        AgentMessage::Register(r) => r,
        other => panic!("expected Register, got {other:?}"),
    };
    assert_eq!(registration.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(), ["linux/amd64"]);
    codec::write_msg(&mut control, &CoordinatorMessage::Registered { heartbeat_interval_ms: 1000 }, DEFAULT_MAX_FRAME)
        .await
        .unwrap();

    let (mut job, mut job_rx) = conn.open_bi().await.unwrap();
    let spec = JobSpec {
        job: JobId::random(),
        build: BuildId::random(),
        platform: "linux/s390x".parse().unwrap(),
        context: Digest::of(b"never fetched"),
        dockerfile: "Dockerfile".into(),
        build_args: vec![],
        target: None,
        labels: vec![],
        repository: "127.0.0.1:1/never".into(),
        attempt: 1,
        no_cache: false,
        pull: false,
        tests: vec![],
        test_target: None,
        cache_from: vec![],
        inline_cache: false,
        provenance: false,
        read_scopes: vec![],
        cache_to_max: None,
    };
    codec::write_msg(&mut job, &CoordinatorMessage::AssignJob(Box::new(spec)), DEFAULT_MAX_FRAME).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match codec::expect_msg::<_, AgentMessage>(&mut job_rx, DEFAULT_MAX_FRAME).await.unwrap() {
                AgentMessage::JobFinished(o) => break o,
                AgentMessage::JobLog { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("the agent answers the job");
    match outcome {
        JobOutcome::Failed(f) => {
            assert_eq!(f.kind, FailureKind::PlatformNotDeclared);
            assert!(f.message.contains("asked to build linux/s390x but declares only linux/amd64"), "{}", f.message);
        }
        JobOutcome::Pushed(p) => panic!("the agent built an undeclared platform: {p:?}"),
    }
    drop(agent);
    endpoint.close(0u32.into(), b"done");
}

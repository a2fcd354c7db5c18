//! Limits before authentication: idle or flooding peers that never present a token hold little
//! memory, are capped in number, and are cut off; authenticated agents and clients carry on.

use archfarm_shared::dial;
use archfarm_shared::protocol::ALPN_ENROLL;
use archfarm_shared::tls::{self, Transport};
use archfarm_tests::*;
use std::time::Duration;

const PEERS: usize = 200;
const CAP: usize = 100;

/// Opens `PEERS` enrollment connections that never finish a request: on the first stream a frame
/// that announces 30 KiB and sends 1 KiB; on every further stream they may open, junk as fast
/// as they can, until `hold` has passed. Returns how many connected, how many were refused, and
/// how many the coordinator had closed by then.
async fn flood(farm: &Farm, hold: Duration) -> (usize, usize, usize) {
    let ca = std::fs::read_to_string(farm.dir.path().join("ca/ca.pem")).unwrap();
    let config = tls::client_config(&ca, None, ALPN_ENROLL, Transport::default()).unwrap();
    let endpoint = tls::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let dials = (0..PEERS).map(|_| {
        let (endpoint, config, address) = (endpoint.clone(), config.clone(), farm.coordinator.clone());
        tokio::spawn(async move {
            let conn = dial::dial_on(&endpoint, &address, Some("localhost"), config, Duration::from_secs(10)).await?;
            let (mut first, _first_recv) = conn.open_bi().await?;
            first.write_all(&(30 * 1024u32).to_be_bytes()).await?;
            first.write_all(&[0u8; 1024]).await?;
            let more = (0..8).map(|_| {
                let conn = conn.clone();
                async move {
                    let (mut send, _recv) = conn.open_bi().await?;
                    let junk = vec![0x5a_u8; 256 * 1024];
                    loop {
                        send.write_all(&junk).await?;
                    }
                    #[allow(unreachable_code)]
                    anyhow::Ok(())
                }
            });
            let _ = tokio::time::timeout(hold, futures_util::future::join_all(more)).await;
            anyhow::Ok((conn, first))
        })
    });
    let results = futures_util::future::join_all(dials).await;
    let connected = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let mut cut_off = 0;
    for (conn, _first) in results.into_iter().flatten().flatten() {
        let reason = conn.close_reason().map(|e| tls::explain(&e)).unwrap_or_default();
        cut_off += usize::from(reason.contains("no enrollment request within 10 s"));
        conn.close(0u32.into(), b"done");
    }
    (connected, PEERS - connected, cut_off)
}

#[test]
fn two_hundred_unauthenticated_peers_pin_little_memory_are_capped_and_cut_off() {
    let mut farm = Farm::builder()
        .agents(&[AgentSpec::amd64()])
        .coordinator_toml(&format!("max_unauthenticated_connections = {CAP}\n"))
        .start();
    let pid = farm.proc("coordinator").pid();
    let before = rss_kib(pid);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (connected, refused, cut_off) = runtime.block_on(flood(&farm, Duration::from_secs(13)));
    let peak = peak_kib(pid);
    eprintln!("coordinator RSS {before:.0} KiB before {PEERS} unauthenticated peers, peak {peak:.0} KiB during");
    assert_eq!((connected, refused), (CAP, PEERS - CAP), "at most {CAP} unauthenticated peers at once");
    // Each may have one stream and 64 KiB in flight: a few MiB for all of them. Without the
    // limits each could fill 32 streams of 16 MiB windows, gigabytes in all.
    assert!(peak - before < 48.0 * 1024.0, "RSS grew from {before:.0} KiB to {peak:.0} KiB");
    farm.proc("coordinator").wait_for_log("too many unauthenticated peers", Duration::from_secs(5));
    assert_eq!(cut_off, CAP, "the coordinator closes every peer that sends no request within 10 s");
    farm.proc("coordinator").wait_for_log("no request within 10 s", Duration::from_secs(5));

    // The agent kept its connection through the flood, and a client and a build work.
    let listed = text(&farm.archfarm(&["agents", "ls"]));
    assert!(listed.contains("amd64-1") && listed.contains("ready"), "{listed}");
    let ctx = context(PER_ARCH_DOCKERFILE);
    let out = farm.build("linux/amd64", &[&format!("{}:1", farm.repo("after-flood"))], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
}

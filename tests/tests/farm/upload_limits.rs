//! Uploads cannot starve the coordinator: a client that opens hundreds of uploads and sends
//! nothing gets four at a time, the rest wait their turn, the four are cut off when idle, and
//! another client's build completes meanwhile. A chunk list that repeats one chunk to make
//! gigabytes is refused.

use archfarm_client::{Connection, Remote};
use archfarm_shared::chunking::Chunk;
use archfarm_shared::protocol::{ClientRequest, ClientResponse};
use archfarm_shared::Digest;
use archfarm_tests::*;
use std::time::{Duration, Instant};

const IDLE_UPLOADS: usize = 600;

fn token(farm: &Farm, args: &[&str]) -> String {
    let out = farm.archfarm(args);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn remote(farm: &Farm, token: &str) -> Remote {
    Remote { coordinator: farm.coordinator.clone(), token: token.to_owned(), ca: farm.dir.path().join("ca/ca.pem") }
}

/// An upload of one chunk of 1 MiB the coordinator does not hold.
fn upload(n: usize) -> ClientRequest {
    let bytes = format!("idle upload {n}");
    let chunk = Chunk { digest: Digest::of(bytes.as_bytes()), size: 1 << 20 };
    ClientRequest::UploadChunked { digest: Digest::of(&n.to_be_bytes()), size: 1 << 20, chunks: vec![chunk] }
}

#[test]
fn six_hundred_idle_uploads_run_four_at_a_time_and_another_clients_build_completes() {
    let farm = Farm::start(&[AgentSpec::amd64()]);
    let flooder = remote(&farm, &token(&farm, &["tokens", "create", "flooder"]));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let conn = runtime.block_on(Connection::open(&flooder)).unwrap();
    // Every upload asked for at once; each then sends nothing.
    let answers = runtime.block_on(async {
        let opened = (0..IDLE_UPLOADS).map(|n| {
            let conn = &conn;
            async move {
                let mut stream = conn.request(&upload(n)).await.unwrap();
                let first = tokio::time::timeout(Duration::from_secs(5), conn.next(&mut stream)).await;
                (stream, first.ok().and_then(Result::ok).flatten())
            }
        });
        futures_util::future::join_all(opened).await
    });
    let running = answers.iter().filter(|(_, a)| matches!(a, Some(ClientResponse::ChunksWanted(_)))).count();
    let queued = answers.iter().filter(|(_, a)| a.is_none()).count();
    assert_eq!((running, queued), (4, IDLE_UPLOADS - 4), "four uploads wait for bytes, the rest for their turn");

    // Meanwhile another client's build uploads its context and completes.
    let started = Instant::now();
    let ctx = context(PER_ARCH_DOCKERFILE);
    let out = farm.build("linux/amd64", &[&format!("{}:1", farm.repo("beside-the-flood"))], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("build beside {IDLE_UPLOADS} idle uploads took {:.1} s", started.elapsed().as_secs_f64());

    // The four are cut off once idle for 30 s, with the reason, and the next four start.
    let (cut, next) = runtime.block_on(async {
        let (mut running, mut queued): (Vec<_>, Vec<_>) =
            answers.into_iter().partition(|(_, a)| matches!(a, Some(ClientResponse::ChunksWanted(_))));
        let mut cut = 0;
        for (stream, _) in &mut running {
            let last = tokio::time::timeout(Duration::from_secs(45), conn.next(stream)).await;
            if let Ok(Ok(Some(ClientResponse::Error { message }))) = last {
                cut += usize::from(message.contains("sent nothing for 30 s"));
            }
        }
        let conn = &conn;
        let answers = futures_util::future::join_all(
            queued.iter_mut().map(|(stream, _)| tokio::time::timeout(Duration::from_secs(3), conn.next(stream))),
        )
        .await;
        let next = answers.iter().filter(|a| matches!(a, Ok(Ok(Some(ClientResponse::ChunksWanted(_)))))).count();
        (cut, next)
    });
    assert_eq!(cut, 4, "every idle upload is cut off");
    assert_eq!(next, 4, "the next four have their turn");
}

#[test]
fn a_chunk_list_that_repeats_one_chunk_into_gigabytes_is_refused() {
    let farm = Farm::start(&[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answer = runtime.block_on(async {
        let conn = Connection::open(&remote(&farm, &farm.token)).await.unwrap();
        let one = Chunk { digest: Digest::of(b"one chunk"), size: 4 << 20 };
        let plan = ClientRequest::UploadChunked {
            digest: Digest::of(b"whatever"),
            size: 1000 * (4 << 20),
            chunks: vec![one; 1000],
        };
        conn.call(&plan).await.unwrap()
    });
    let ClientResponse::Error { message } = answer else { panic!("accepted: {answer:?}") };
    assert!(message.contains("repeats 4190109696 bytes of 4194304 distinct ones"), "{message}");
    let data = farm.dir.path().join("data/contexts");
    let files = std::fs::read_dir(&data).unwrap().count();
    assert_eq!(files, 0, "nothing was written to {}", data.display());
}

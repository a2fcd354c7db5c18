//! A scripted agent for tests of the coordinator's side: it registers over real QUIC with a
//! real certificate, answers heartbeats, and hands each job to the test, which decides what to
//! report. It never builds anything; tests use it to play an agent that misbehaves.

use crate::farm::Farm;
use crate::fixtures::bin;
use crate::process::run_ok;
use archfarm_shared::codec::{self, DEFAULT_MAX_FRAME};
use archfarm_shared::protocol::{AgentMessage, CoordinatorMessage, JobOutcome, JobSpec, Registration, ALPN_AGENT};
use archfarm_shared::tls;
use std::process::Command;
use std::time::Duration;

/// A registered scripted agent.
#[derive(Debug)]
pub struct ScriptedAgent {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    heartbeat: tokio::task::JoinHandle<()>,
}

/// A job given to a scripted agent, with the stream to answer on.
#[derive(Debug)]
pub struct Job {
    /// What the coordinator asked for.
    pub spec: JobSpec,
    send: quinn::SendStream,
    _recv: quinn::RecvStream,
}

impl Job {
    /// Sends one line of build output; false once the coordinator stopped reading.
    pub async fn log(&mut self, line: String) -> bool {
        codec::write_msg(&mut self.send, &AgentMessage::JobLog { line }, DEFAULT_MAX_FRAME).await.is_ok()
    }

    /// Reports an outcome, as a real agent would at the end of a job.
    pub async fn finish(mut self, outcome: JobOutcome) {
        codec::write_msg(&mut self.send, &AgentMessage::JobFinished(outcome), DEFAULT_MAX_FRAME).await.unwrap();
        let _ = self.send.finish();
        // Let the frame leave before the stream is dropped.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl ScriptedAgent {
    /// The registration a scripted agent of `platforms` sends.
    pub fn registration(platforms: &[&str]) -> Registration {
        Registration {
            platforms: platforms.iter().map(|p| p.parse().unwrap()).collect(),
            capacity: 1,
            engine: archfarm_shared::protocol::EngineFacts::of_version("scripted"),
            agent_version: "test".into(),
            capabilities: Default::default(),
            credentials_for: vec![],
        }
    }

    /// Issues a certificate for `name` from the farm CA and registers with `platforms`.
    pub async fn join(farm: &Farm, name: &str, platforms: &[&str]) -> ScriptedAgent {
        match Self::register(farm, name, Self::registration(platforms)).await {
            Ok(agent) => agent,
            Err(why) => panic!("scripted agent {name} not registered: {why}"),
        }
    }

    /// Issues a certificate for `name` from the farm CA and sends `registration`; `Err` with
    /// the coordinator's refusal (or the reason it closed the connection).
    pub async fn register(farm: &Farm, name: &str, registration: Registration) -> Result<ScriptedAgent, String> {
        let ca_dir = farm.dir.path().join("ca");
        run_ok(Command::new(bin("archfarm")).args(["ca", "issue-agent", name, "--dir"]).arg(&ca_dir));
        Self::register_again(farm, name, registration).await
    }

    /// Sends `registration` with the certificate [`ScriptedAgent::register`] issued for `name`
    /// last, as an agent that restarts does.
    pub async fn register_again(farm: &Farm, name: &str, registration: Registration) -> Result<ScriptedAgent, String> {
        tls::install_crypto_provider();
        let ca_dir = farm.dir.path().join("ca");
        let read = |f: String| std::fs::read_to_string(ca_dir.join(f)).unwrap();
        let (ca, cert, key) = (read("ca.pem".into()), read(format!("{name}.pem")), read(format!("{name}.key")));
        let config = tls::client_config(&ca, Some((&cert, &key)), ALPN_AGENT, tls::Transport::default()).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(config);
        let conn = endpoint.connect(farm.coordinator.parse().unwrap(), "localhost").unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let closed = |conn: &quinn::Connection, e: &dyn std::fmt::Display| match conn.close_reason() {
            Some(reason) => tls::explain(&reason),
            None => e.to_string(),
        };
        if let Err(e) = codec::write_msg(&mut send, &AgentMessage::Register(registration), DEFAULT_MAX_FRAME).await {
            return Err(closed(&conn, &e));
        }
        match codec::expect_msg::<_, CoordinatorMessage>(&mut recv, DEFAULT_MAX_FRAME).await {
            Ok(CoordinatorMessage::Registered { .. }) => {}
            Ok(other) => return Err(format!("{other:?}")),
            Err(e) => {
                // The refusal closes the connection; its reason arrives with the close.
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
                return Err(closed(&conn, &e));
            }
        }
        let heartbeat = tokio::spawn(async move {
            let reader = tokio::spawn(async move {
                while let Ok(Some(_)) = codec::read_msg::<_, CoordinatorMessage>(&mut recv, DEFAULT_MAX_FRAME).await {}
            });
            loop {
                if codec::write_msg(&mut send, &AgentMessage::Heartbeat { running: 0 }, DEFAULT_MAX_FRAME)
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            reader.abort();
        });
        Ok(ScriptedAgent { _endpoint: endpoint, conn, heartbeat })
    }

    /// Asks for a build context as an agent does before a build: the coordinator's answer.
    pub async fn fetch_context(&self, digest: &archfarm_shared::Digest) -> CoordinatorMessage {
        self.fetch_context_wanting(digest, None).await.0
    }

    /// Fetches a build context answering its chunk list with `bitmap` (or, when `None`, the
    /// bitmap that wants every chunk): the coordinator's answer, and every byte that followed
    /// until the stream ended or broke.
    pub async fn fetch_context_wanting(
        &self,
        digest: &archfarm_shared::Digest,
        bitmap: Option<Vec<u8>>,
    ) -> (CoordinatorMessage, Vec<u8>) {
        let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
        let ask = AgentMessage::FetchContext { digest: digest.clone() };
        codec::write_msg(&mut send, &ask, DEFAULT_MAX_FRAME).await.unwrap();
        let answer = codec::expect_msg::<_, CoordinatorMessage>(&mut recv, DEFAULT_MAX_FRAME).await.unwrap();
        let CoordinatorMessage::ContextChunks { chunks, .. } = answer else { return (answer, vec![]) };
        let mut list = vec![0u8; chunks as usize * archfarm_shared::chunking::LISTED_CHUNK];
        recv.read_exact(&mut list).await.unwrap();
        let bitmap = bitmap.unwrap_or_else(|| archfarm_shared::chunking::bitmap_of(&vec![true; chunks as usize]));
        let _ = send.write_all(&bitmap).await;
        let _ = send.finish();
        let mut bytes = Vec::new();
        let read = async {
            while let Ok(Some(chunk)) = recv.read_chunk(1 << 20, true).await {
                bytes.extend_from_slice(&chunk.bytes);
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), read).await;
        (answer, bytes)
    }

    /// Hands over `bytes` as a blob of `job`'s image, as an agent does for a build that names
    /// no registry: the coordinator's answer.
    pub async fn store_blob(&self, job: &archfarm_shared::JobId, bytes: &[u8]) -> CoordinatorMessage {
        let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
        let digest = archfarm_shared::Digest::of(bytes);
        let head = AgentMessage::StoreBlob { digest, size: bytes.len() as u64, job: job.clone() };
        codec::write_msg(&mut send, &head, DEFAULT_MAX_FRAME).await.unwrap();
        // A refused blob is answered before its bytes are read: the write may then fail.
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            codec::expect_msg::<_, CoordinatorMessage>(&mut recv, DEFAULT_MAX_FRAME),
        );
        answer.await.expect("an answer within 30 s").unwrap()
    }

    /// Waits (bounded) for the coordinator to give this agent a job.
    pub async fn next_job(&self, timeout: Duration) -> Job {
        let (send, mut recv) =
            tokio::time::timeout(timeout, self.conn.accept_bi()).await.expect("a job within the timeout").unwrap();
        match codec::expect_msg::<_, CoordinatorMessage>(&mut recv, DEFAULT_MAX_FRAME).await.unwrap() {
            CoordinatorMessage::AssignJob(spec) => Job { spec: *spec, send, _recv: recv },
            other => panic!("expected a job, got {other:?}"),
        }
    }
}

impl Drop for ScriptedAgent {
    fn drop(&mut self) {
        self.heartbeat.abort();
        self.conn.close(0u32.into(), b"scripted agent done");
    }
}

//! P4: how fast a context reaches the coordinator, against a raw loopback TCP copy of the same
//! bytes, and how much of it travels again after one file changes.
//!
//! The upload is timed from the first request to the coordinator's `ContextStored`: the chunk
//! list, the chunks, and the coordinator's work (each chunk's digest, the whole digest, the
//! tarball check, writing; the coordinator flushes the file to disk after it answers). The TCP
//! copy sends the packed file over a plain loopback socket into a file beside the coordinator's
//! data; the headline's copy ends without an fsync, as the upload does, and the details show it
//! with one too.

use super::report::{at_least, at_most, Figure, Series};
use super::Options;
use crate::Farm;
use archfarm_client::{context, upload::upload, Connection, Remote};
use rand::{RngCore, SeedableRng};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Instant;

const FILE_BYTES: usize = 16 << 20;

/// A context of `size` bytes of fresh random content (incompressible, never seen before) in
/// 16 MiB files.
fn fresh_context(size: u64, seed: u64) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY . /data\n")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; FILE_BYTES];
    let files = size.div_ceil(FILE_BYTES as u64);
    for i in 0..files {
        rng.fill_bytes(&mut buf);
        std::fs::write(dir.path().join(format!("blob-{i:04}.bin")), &buf)?;
    }
    Ok(dir)
}

/// Copies `src` over a loopback TCP connection into a new file in `dir`; returns seconds.
fn tcp_copy(src: &Path, dir: &Path, durable: bool) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let dest = dir.join(format!("tcp-copy-{:x}", rand::random::<u64>()));
    let receiver = {
        let dest = dest.clone();
        std::thread::spawn(move || -> std::io::Result<u64> {
            let (mut sock, _) = listener.accept()?;
            let mut file = std::fs::File::create(&dest)?;
            let n = std::io::copy(&mut sock, &mut file)?;
            if durable {
                file.sync_all()?;
            }
            Ok(n)
        })
    };
    let started = Instant::now();
    let mut sock = TcpStream::connect(addr)?;
    let mut file = std::fs::File::open(src)?;
    std::io::copy(&mut file, &mut sock)?;
    sock.flush()?;
    sock.shutdown(std::net::Shutdown::Write)?;
    let copied = receiver.join().map_err(|_| anyhow::anyhow!("the TCP receiver panicked"))??;
    let secs = started.elapsed().as_secs_f64();
    std::fs::remove_file(&dest)?;
    anyhow::ensure!(copied == std::fs::metadata(src)?.len(), "the TCP copy lost bytes");
    Ok(secs)
}

/// Empties the coordinator's context and chunk stores between runs (a benchmark's housekeeping:
/// each run must upload into a store that has none of its bytes, and the disk is finite).
fn clear_stores(farm: &Farm) {
    for d in ["data/contexts", "data/chunks"] {
        if let Ok(entries) = std::fs::read_dir(farm.dir.path().join(d)) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Runs P4.
pub fn run(o: &Options) -> anyhow::Result<Figure> {
    let size = o.size(1u64 << 30, 64 << 20);
    eprintln!("bench: P4 with a {} MiB context", size >> 20);
    let farm = Farm::builder().patient().start();
    archfarm_shared::tls::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new()?;
    let remote = Remote {
        coordinator: farm.coordinator.clone(),
        token: farm.token.clone(),
        ca: farm.dir.path().join("ca/ca.pem"),
    };
    let (mut quic, mut tcp_durable, mut tcp_plain, mut resent, mut resent_payload, mut datagrams) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Run 0 warms the page cache, the allocator and the connection path; it is not counted.
    for run in 0..=o.runs {
        clear_stores(&farm);
        let ctx = fresh_context(size, rand::random())?;
        let packed = context::pack(ctx.path(), None, 8 << 30).map_err(anyhow::Error::msg)?;
        let survey = std::sync::Arc::new(context::survey(ctx.path(), None).map_err(anyhow::Error::msg)?);
        let conn = rt.block_on(Connection::open(&remote))?;
        let started = Instant::now();
        rt.block_on(upload(&conn, &packed, survey.clone(), false))?;
        let q = started.elapsed().as_secs_f64();
        let stats = conn.stats();
        let (packets, lost, mtu) = (stats.udp_tx.datagrams, stats.path.lost_packets, stats.path.current_mtu);
        rt.block_on(conn.close());
        let durable = tcp_copy(packed.file.path(), farm.dir.path(), true)?;
        let plain = tcp_copy(packed.file.path(), farm.dir.path(), false)?;

        // Change one file (a few bytes in the middle of one blob) and upload again.
        let victim = ctx.path().join("blob-0001.bin");
        let mut bytes = std::fs::read(&victim)?;
        let middle = bytes.len() / 2;
        bytes[middle..middle + 64].copy_from_slice(&[0x5a; 64]);
        std::fs::write(&victim, bytes)?;
        let changed = context::pack(ctx.path(), None, 8 << 30).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(changed.digest != packed.digest, "the change did not change the context");
        let conn = rt.block_on(Connection::open(&remote))?;
        let before = conn.stats().udp_tx.bytes;
        let sent = rt.block_on(upload(&conn, &changed, survey.clone(), false))?;
        let on_wire = conn.stats().udp_tx.bytes - before;
        rt.block_on(conn.close());
        let mb = size as f64 / (1 << 20) as f64;
        eprintln!(
            "bench: P4 run {run}: upload {:.0} MiB/s ({packets} datagrams of up to {mtu} bytes, {lost} lost), TCP copy {:.0} MiB/s (no \
             fsync {:.0}); re-upload {} bytes on the wire",
            mb / q,
            mb / durable,
            mb / plain,
            on_wire
        );
        if run > 0 {
            quic.push(q);
            tcp_durable.push(durable);
            tcp_plain.push(plain);
            resent.push(on_wire as f64 * 100.0 / changed.size as f64);
            resent_payload.push(sent.bytes as f64 / (1 << 20) as f64);
            datagrams.push(packets as f64);
        }
    }
    let mib = |secs: &[f64]| secs.iter().map(|s| size as f64 / (1 << 20) as f64 / s).collect::<Vec<_>>();
    let ratio = tcp_plain.iter().zip(&quic).map(|(t, q)| t / q).collect();
    let headline = Series::new("upload throughput ÷ TCP copy throughput", "×", ratio);
    let resent = Series::new("bytes sent to re-upload after changing one file (UDP payload, all of it)", "%", resent);
    Ok(Figure {
        id: "P4",
        measure: format!("context upload throughput ÷ raw loopback TCP copy ({} MiB context)", size >> 20),
        target: "≥ 0.8".into(),
        verdict: at_least(headline.median(), 0.8),
        also: vec![(resent.clone(), "≤ 2 %".into(), at_most(resent.median(), 2.0))],
        headline,
        details: vec![
            Series::new("upload over QUIC (chunk list, chunks, coordinator checks)", "MiB/s", mib(&quic)),
            Series::new("TCP copy into a file, then fsync", "MiB/s", mib(&tcp_durable)),
            Series::new("TCP copy into a file, no fsync", "MiB/s", mib(&tcp_plain)),
            Series::new("chunk bytes sent by the re-upload", "MiB", resent_payload),
            Series::new("UDP datagrams the upload sent", "", datagrams),
        ],
        notes: vec![format!(
            "Each run uploads a new context of {} MiB of random (incompressible) bytes in 16 MiB files into stores \
             holding none of it, then changes 64 bytes in the middle of one file and uploads again. The re-upload \
             figure counts every UDP payload byte the client sent (QUIC's own counter): the request, the chunk list, \
             the chunks and the acknowledgements.",
            size >> 20
        )],
    })
}

//! `bench`: archfarm's benchmark harness (run it through `scripts/bench.sh`, which sets up the
//! engine and registry and builds the release binaries first).
//!
//! Usage: `bench [--quick] [--runs N] [--only P1,P4] [--out FILE]`

use archfarm_tests::bench::{self, Options};
use std::path::PathBuf;

fn usage() -> ! {
    eprintln!("usage: bench [--quick] [--runs N] [--only P1,P2,...] [--out FILE]");
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        quick: false,
        runs: 3,
        only: Vec::new(),
        out: archfarm_tests::workspace().join("docs/benchmarks.md"),
        command: std::env::var("ARCHFARM_BENCH_COMMAND").unwrap_or_else(|_| "scripts/bench.sh".into()),
    };
    let mut out = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--runs" => {
                options.runs = args.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0).unwrap_or_else(|| usage())
            }
            "--only" => options.only = args.next().unwrap_or_else(|| usage()).split(',').map(str::to_owned).collect(),
            "--out" => out = Some(PathBuf::from(args.next().unwrap_or_else(|| usage()))),
            "-h" | "--help" => usage(),
            other => {
                eprintln!("bench: unknown argument {other:?}");
                usage()
            }
        }
    }
    if options.quick {
        options.runs = 1;
        options.out = archfarm_tests::workspace().join(".farm/bench-quick.md");
    }
    if let Some(out) = out {
        options.out = out;
    }
    // Ctrl-C or SIGTERM: stop the farm's processes (no Drop runs on a signal) and undo binfmt.
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("bench: interrupted; stopping the farm");
        archfarm_tests::kill_started_processes();
        bench::binfmt::undo_if_left();
        std::process::exit(130);
    });
    match bench::run(&options) {
        Ok(report) => {
            println!("{report}");
            eprintln!("bench: report written to {}", options.out.display());
        }
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::exit(1);
        }
    }
}

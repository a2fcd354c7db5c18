//! P8, cache affinity: two linux/amd64 agents, each on a dockerd of its own (so each has a
//! BuildKit cache of its own), and a sequence of rebuilds of several repositories, two builds
//! at a time. Each repository's Dockerfile has an expensive step (a sleep, standing in for
//! installing dependencies) and a cheap last layer that changes with every build. The sequence
//! runs with cache affinity and without it (`cache_affinity = false`), in turn within each run,
//! each time on fresh repositories and a fresh expensive step.
//!
//! Within each pair the first build is submitted, and the second once the first has its agent;
//! their order alternates from round to round, as arrivals do on a busy farm. Without affinity
//! the first arrival takes the agent that sorts first, so a repository lands on the other
//! agent every other round; with it, each goes back to the agent that built it last.
//!
//! A hit is a rebuild whose expensive step BuildKit answered from cache (`CACHED` in the build
//! log); the time is each rebuild's wall time from submission to its published index.

use super::report::{Figure, Series, Verdict};
use super::Options;
use crate::process::{text, wait_output, wait_until};
use crate::Engine;
use crate::{fixtures, AgentSpec, Farm};
use std::process::Child;
use std::time::{Duration, Instant};

/// What one sequence gave.
#[derive(Debug, Default)]
struct Outcome {
    rebuilds: usize,
    hits: usize,
    rebuild_secs: Vec<f64>,
}

fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A repository's context: the expensive step depends on `deps`, the last layer on app.txt.
fn repo_context(deps: &str, step_secs: u32) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("bin"))?;
    std::fs::copy(fixtures("amd64"), dir.path().join("bin/busybox"))?;
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY bin/busybox /bin/busybox\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"sleep {step_secs}; echo {deps} > /deps\"]\nCOPY app.txt /app.txt\n"
        ),
    )?;
    Ok(dir)
}

/// Whether the build log shows the expensive step answered from cache: the vertex whose name
/// holds "sleep" has a `#N CACHED` line.
fn step_cached(log: &str) -> bool {
    let Some(vertex) = log.lines().find(|l| l.contains("RUN") && l.contains("sleep")).and_then(|l| {
        let start = l.find('#')?;
        l[start..].split_whitespace().next().map(str::to_owned)
    }) else {
        return false;
    };
    log.lines().any(|l| l.trim_end().ends_with(&format!("{vertex} CACHED")))
}

fn spawn(farm: &Farm, repo: &str, ctx: &tempfile::TempDir) -> anyhow::Result<(Child, Instant)> {
    std::fs::write(ctx.path().join("app.txt"), nonce())?;
    let tag = format!("{}:{}", farm.repo(repo), nonce());
    Ok((farm.spawn_build("linux/amd64", &[&tag], ctx.path()), Instant::now()))
}

/// Waits until the newest build has an agent.
fn wait_assigned(farm: &Farm) {
    wait_until(Duration::from_secs(120), "the first build of a pair to get its agent", || {
        farm.last_attempt(&farm.newest_build()).map(drop)
    });
}

/// Builds each of `repos` repositories `rounds` times, two at a time.
fn sequence(farm: &Farm, repos: usize, rounds: usize, step_secs: u32) -> anyhow::Result<Outcome> {
    let run = nonce();
    let names: Vec<String> = (0..repos).map(|i| format!("affinity-{run}-{i}")).collect();
    let contexts =
        names.iter().map(|n| repo_context(n, step_secs)).collect::<anyhow::Result<Vec<tempfile::TempDir>>>()?;
    let mut outcome = Outcome::default();
    for round in 0..rounds {
        for pair in (0..repos).collect::<Vec<_>>().chunks(2) {
            let mut order = pair.to_vec();
            if round % 2 == 1 {
                order.reverse();
            }
            let mut running = Vec::new();
            for (n, &i) in order.iter().enumerate() {
                running.push(spawn(farm, &names[i], &contexts[i])?);
                if n + 1 < order.len() {
                    wait_assigned(farm);
                }
            }
            for (child, started) in running {
                let out = wait_output(child, Duration::from_secs(600));
                anyhow::ensure!(out.status.success(), "a P8 build failed: {}", text(&out));
                if round > 0 {
                    outcome.rebuilds += 1;
                    outcome.hits += usize::from(step_cached(&text(&out)));
                    outcome.rebuild_secs.push(started.elapsed().as_secs_f64());
                }
            }
        }
    }
    Ok(outcome)
}

fn sum(v: &[f64]) -> f64 {
    v.iter().sum()
}

/// Runs P8.
pub fn run(options: &Options) -> anyhow::Result<Figure> {
    let (repos, rounds, step_secs) = (options.size(4, 2), options.size(3, 2), options.size(3, 1));
    let mut farm = Farm::start(&[]);
    let engines = [Engine::start(&farm.dir.path().join("engine-1")), Engine::start(&farm.dir.path().join("engine-2"))];
    for (name, engine) in ["amd64-1", "amd64-2"].into_iter().zip(&engines) {
        let agent = AgentSpec { name, native: None, capacity: 1 };
        farm.start_agent_configured(&agent, &format!("docker_host = \"{}\"\n", engine.host));
    }
    farm.wait_for_agents(&["amd64-1", "amd64-2"]);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for run in 0..options.runs {
        // Which mode goes first alternates, so neither always runs on a busier machine.
        let modes = if run % 2 == 0 { [true, false] } else { [false, true] };
        for affinity in modes {
            farm.set_coordinator_toml(&format!("cache_affinity = {affinity}\n"));
            farm.restart_coordinator();
            farm.wait_for_agents(&["amd64-1", "amd64-2"]);
            let outcome = sequence(&farm, repos, rounds, step_secs)?;
            eprintln!(
                "bench: P8 run {run}, affinity {affinity}: {}/{} rebuilds hit the cache, {:.1} s",
                outcome.hits,
                outcome.rebuilds,
                sum(&outcome.rebuild_secs)
            );
            if affinity { &mut with } else { &mut without }.push(outcome);
        }
    }
    // The engines first: their data lies in the farm's folder, which cannot be removed while a
    // dockerd still has its mounts there (it was left behind in /tmp, engines' data and all).
    drop(engines);
    drop(farm);
    let rate =
        |o: &Vec<Outcome>| -> Vec<f64> { o.iter().map(|x| 100.0 * x.hits as f64 / x.rebuilds.max(1) as f64).collect() };
    let secs = |o: &Vec<Outcome>| -> Vec<f64> { o.iter().map(|x| sum(&x.rebuild_secs)).collect() };
    let ratio: Vec<f64> = secs(&without).iter().zip(secs(&with)).map(|(a, b)| a / b).collect();
    let rebuilds = repos * (rounds - 1);
    Ok(Figure {
        id: "P8",
        measure: format!(
            "rebuild time without cache affinity ÷ with it (two amd64 agents, {repos} repositories, {rebuilds} \
             rebuilds two at a time, a {step_secs} s cached step)"
        ),
        target: "reported".into(),
        verdict: Verdict::Reported,
        headline: Series::new("ratio", "×", ratio),
        also: vec![
            (Series::new("cache hits with affinity", "%", rate(&with)), "reported".into(), Verdict::Reported),
            (Series::new("cache hits without affinity", "%", rate(&without)), "reported".into(), Verdict::Reported),
        ],
        details: vec![
            Series::new("rebuilds with affinity, all together", "s", secs(&with)),
            Series::new("rebuilds without affinity, all together", "s", secs(&without)),
        ],
        notes: vec![
            "Each agent builds on a dockerd of its own, so a cache is warm only on the agent that built the \
             repository; the pair's order alternates each round, as arrivals do on a busy farm."
                .into(),
            "A hit is a rebuild whose expensive step BuildKit answered from cache (CACHED in its log).".into(),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_is_the_sleep_steps_cached_line() {
        let hit = "#5 [3/4] RUN [\"/bin/busybox\", \"sh\", \"-c\", \"sleep 3; echo x > /deps\"]\n#5 CACHED\n#6 DONE\n";
        assert!(step_cached(hit));
        let miss = "#5 [3/4] RUN [\"/bin/busybox\", \"sh\", \"-c\", \"sleep 3; echo x > /deps\"]\n#5 DONE\n#6 CACHED\n";
        assert!(!step_cached(miss));
        assert!(!step_cached("no such step\n"));
    }
}

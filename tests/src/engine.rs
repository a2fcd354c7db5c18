//! A second Docker Engine, for a test that must make an engine sick without touching the one
//! every other test shares: its own data root, exec root and socket under the test's
//! directory, and its own network namespace (two dockerds in one namespace fight over the
//! `docker0` bridge: the second one's shutdown deletes the first one's). Stopped (and resumed
//! first, if paused) when dropped, and its namespace deleted.

use crate::process::{wait_until, Proc};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A dockerd of the test's own.
#[derive(Debug)]
pub struct Engine {
    proc: Proc,
    /// Forwarders that let the engine reach ports of the host's loopback (stopped before it).
    forwards: Vec<Proc>,
    dir: PathBuf,
    // Dropped after the engine is stopped (fields drop after `Drop::drop`, and in order).
    _netns: Netns,
    /// `unix:///…/docker.sock`, for an agent's `docker_host`.
    pub host: String,
    paused: bool,
}

impl Engine {
    /// Starts a dockerd with everything under `dir`, and waits (bounded) until it answers.
    pub fn start(dir: &Path) -> Engine {
        Self::start_with(dir, None)
    }

    /// Starts the current engine of `scripts/engine-current.sh` (Debian 13's, on the
    /// containerd image store) the same way: its own data, socket and network namespace.
    pub fn start_current(dir: &Path) -> Engine {
        let root = crate::workspace().join(".farm/engine-current/root");
        assert!(
            root.join("usr/sbin/dockerd").exists(),
            "no current engine under {}: run scripts/engine-current.sh start (scripts/test.sh does)",
            root.display()
        );
        Self::start_with(dir, Some(&root))
    }

    /// [`Engine::start`], with the binaries unpacked under `current` and the containerd store
    /// when given.
    fn start_with(dir: &Path, current: Option<&Path>) -> Engine {
        let root = |p: &str| -> PathBuf { dir.join(p) };
        std::fs::create_dir_all(dir).unwrap();
        let host = format!("unix://{}", root("docker.sock").display());
        let netns = format!("archfarm-engine-{}-{:x}", std::process::id(), rand::random::<u32>());
        crate::process::run_ok(Command::new("ip").args(["netns", "add", &netns]));
        let netns = Netns(netns);
        crate::process::run_ok(Command::new("ip").args(["netns", "exec", &netns.0, "ip", "link", "set", "lo", "up"]));
        let mut cmd = Command::new("nsenter");
        // nsenter joins only the network namespace: `ip netns exec` also remounts /sys, which
        // hides the cgroups dockerd needs.
        match current {
            Some(unpacked) => {
                let path = std::env::var("PATH").unwrap_or_default();
                let bins = format!("{0}/usr/bin:{0}/usr/sbin:{path}", unpacked.display());
                std::fs::write(root("daemon.json"), r#"{"features":{"containerd-snapshotter":true}}"#).unwrap();
                cmd.env("PATH", bins).arg(format!("--net=/var/run/netns/{}", netns.0));
                cmd.arg(unpacked.join("usr/sbin/dockerd")).arg("--config-file").arg(root("daemon.json"));
                cmd.arg("--ip6tables=false");
            }
            None => {
                cmd.arg(format!("--net=/var/run/netns/{}", netns.0)).arg("dockerd");
            }
        }
        cmd.arg("--data-root").arg(root("data")).arg("--exec-root").arg(root("exec"));
        cmd.arg("--pidfile").arg(root("docker.pid")).args(["-H", &host, "--iptables=false"]);
        let proc = Proc::start("second dockerd", cmd, root("dockerd.log"));
        wait_until(Duration::from_secs(30), "the second dockerd to answer", || {
            let out = Command::new("docker")
                .env("DOCKER_HOST", &host)
                .args(["version", "--format", "{{.Server.Version}}"])
                .output()
                .ok()?;
            out.status.success().then_some(())
        });
        Engine { proc, forwards: Vec::new(), dir: dir.to_owned(), _netns: netns, host, paused: false }
    }

    /// Lets the engine reach `127.0.0.1:port` of the host (a registry), through two socat
    /// processes joined by a unix socket: one listens on the port inside the engine's network
    /// namespace, the other connects to the host's port.
    pub fn reach(&mut self, port: u16) {
        let socket = self.dir.join(format!("forward-{port}.sock"));
        let mut host_side = Command::new("socat");
        host_side.arg(format!("UNIX-LISTEN:{},fork", socket.display())).arg(format!("TCP:127.0.0.1:{port}"));
        self.forwards.push(Proc::start(
            "socat (host side)",
            host_side,
            self.dir.join(format!("forward-{port}-host.log")),
        ));
        wait_until(Duration::from_secs(10), "the forwarding socket", || socket.exists().then_some(()));
        let mut engine_side = Command::new("nsenter");
        engine_side
            .arg(format!("--net=/var/run/netns/{}", self._netns.0))
            .arg("socat")
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
            .arg(format!("UNIX-CONNECT:{}", socket.display()));
        self.forwards.push(Proc::start(
            "socat (engine side)",
            engine_side,
            self.dir.join(format!("forward-{port}-ns.log")),
        ));
        let probe = format!("exec 3<>/dev/tcp/127.0.0.1/{port}");
        wait_until(Duration::from_secs(10), "the forwarded port inside the namespace", || {
            let ok = Command::new("ip")
                .args(["netns", "exec", &self._netns.0, "bash", "-c", &probe])
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(())
        });
    }

    /// The engine's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Freezes the engine (SIGSTOP): it accepts connections and answers nothing.
    pub fn pause(&mut self) {
        crate::process::run_ok(Command::new("kill").args(["-STOP", &self.proc.pid().to_string()]));
        self.paused = true;
    }

    /// Lets a paused engine run again (SIGCONT).
    pub fn resume(&mut self) {
        crate::process::run_ok(Command::new("kill").args(["-CONT", &self.proc.pid().to_string()]));
        self.paused = false;
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.paused {
            self.resume();
        }
        // dockerd stops the containerd it started on SIGTERM; give it the time that takes
        // rather than the harness's usual five seconds before SIGKILL would orphan it.
        let _ = self.proc.terminate_and_wait(Duration::from_secs(30));
        self.proc.stop();
        for forward in &mut self.forwards {
            forward.stop();
        }
        unmount_under(&self.dir);
    }
}

/// Unmounts what a dockerd left mounted under `dir` (its data root is a bind mount of itself,
/// which a shutdown cut short leaves behind; the test's folder then cannot be removed, and stays
/// in /tmp with the engine's data), deepest first.
fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else { return };
    let mut under: Vec<&str> =
        mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| Path::new(m).starts_with(dir)).collect();
    under.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in under {
        let _ = Command::new("umount").arg("-l").arg(mount).status();
    }
}

/// A network namespace of the test's own, deleted when dropped (also when a test panics).
#[derive(Debug)]
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

//! Several hosts on one machine: a bridge in the root namespace (where the registry listens),
//! and one network namespace per host joined to it by a veth pair. A host's link can be cut
//! (`ip link set ... down`) and healed. Everything is removed when the [`Net`] drops. Only
//! addresses of these namespaces (10.231.N.0/24) are ever used.

use std::process::Command;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// One host: a network namespace with one link to the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace name.
    pub ns: String,
    /// Its address on the bridge.
    pub ip: String,
    /// The root-side end of its veth pair; down means cut off.
    link: String,
}

/// A bridge and the hosts on it.
#[derive(Debug)]
pub struct Net {
    id: u32,
    bridge: String,
    hosts: Vec<Host>,
}

impl Net {
    /// A new bridge with a subnet no other test uses.
    pub fn create() -> Net {
        let mut id = 20 + std::process::id() % 200;
        while Command::new("ip")
            .args(["link", "show", &format!("afb{id}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
        {
            id = 20 + (id + 1 - 20) % 200;
        }
        let bridge = format!("afb{id}");
        ip(&["link", "add", "name", &bridge, "type", "bridge"]);
        let net = Net { id, bridge, hosts: Vec::new() };
        ip(&["addr", "add", &format!("10.231.{id}.1/24"), "dev", &net.bridge]);
        ip(&["link", "set", &net.bridge, "up"]);
        net
    }

    /// The root namespace's address on the bridge (where the registry listens).
    pub fn bridge_ip(&self) -> String {
        format!("10.231.{}.1", self.id)
    }

    /// Adds a host in its own namespace.
    pub fn add_host(&mut self, name: &str) -> Host {
        let n = self.hosts.len() + 2;
        let ns = format!("af{}-{name}", self.id);
        let link = format!("af{}h{n}", self.id);
        let peer = format!("af{}p{n}", self.id);
        let addr = format!("10.231.{}.{n}", self.id);
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["link", "set", &link, "master", &self.bridge]);
        ip(&["link", "set", &link, "up"]);
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &peer]);
        ip(&["-n", &ns, "link", "set", &peer, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let host = Host { ns, ip: addr, link };
        self.hosts.push(host.clone());
        host
    }

    /// Cuts a host's link: nothing crosses it until [`Net::heal`].
    pub fn cut(&self, host: &Host) {
        ip(&["link", "set", &host.link, "down"]);
    }

    /// Restores a host's link.
    pub fn heal(&self, host: &Host) {
        ip(&["link", "set", &host.link, "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            // Deleting the namespace deletes its veth end, and with it the root end.
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

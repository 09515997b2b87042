//! Network namespaces a test creates to cut members of a fleet off from
//! each other ([`Partitionable`]): each member gets a namespace of its own
//! with two links,
//!
//! - `gossip`: a veth into a hub namespace whose bridge joins every
//!   member (`10.X.0.<i+1>/24`); the test cuts member `i` off by setting
//!   its hub end down (its datagrams then vanish, as on a real partition)
//!   and heals it by setting it up again;
//! - `ctl`: a veth to the test's own namespace (`10.Y.<i>.2/30`, the test
//!   side `10.Y.<i>.1`), never cut: the test reaches the member's proxy
//!   and admin listeners through it, and the member reaches the test's
//!   instances, which listen on [`Partitionable::host`] (`10.Y.0.1`).
//!
//! The subnets are picked from the test's PID. Needs root and `ip`
//! (iproute2); without either the test fails saying so. Every namespace
//! and link is named from the PID and removed by name when the guard is
//! dropped, also when the test fails.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;

/// The `ip` binary; a missing one fails the test saying how to install it.
pub fn ip_binary() -> String {
    for p in ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"] {
        if std::path::Path::new(p).exists() {
            return p.to_owned();
        }
    }
    panic!("`ip` not found: install iproute2 (apt-get install iproute2; .ci/test does)");
}

/// Runs `ip ARGS`, failing the test with its output if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new(ip_binary())
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}{}(network namespaces need root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip ARGS`, its failure ignored (cleanup).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new(ip_binary()).args(args).output();
}

/// Members in namespaces of their own, joined by a bridge the test can
/// cut each of them off from.
#[derive(Debug)]
pub struct Partitionable {
    tag: String,
    hub: String,
    members: usize,
    gossip_net: u8,
    ctl_net: u8,
}

impl Partitionable {
    /// Creates the hub and `members` member namespaces.
    pub fn new(members: usize) -> Partitionable {
        assert!(members < 250);
        let pid = std::process::id();
        let tag = format!("wf{}", pid % 1_000_000);
        let net = |base: u32| (base + pid % 50) as u8;
        let me = Partitionable {
            hub: format!("{tag}-hub"),
            tag,
            members,
            gossip_net: net(100),
            ctl_net: net(150),
        };
        // Leftovers of an earlier process with the same PID, if any.
        me.remove();
        let hub = me.hub.as_str();
        ip(&["netns", "add", hub]);
        ip(&["-n", hub, "link", "set", "lo", "up"]);
        ip(&["-n", hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", hub, "link", "set", "br0", "up"]);
        for i in 0..members {
            let ns = me.namespace(i);
            let port = format!("p{i}");
            let root_end = me.root_link(i);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            // gossip: member <-> hub bridge
            ip(&[
                "-n", hub, "link", "add", &port, "type", "veth", "peer", "name", "gossip", "netns",
                &ns,
            ]);
            ip(&["-n", hub, "link", "set", &port, "master", "br0", "up"]);
            let g = format!("{}/24", me.gossip_ip(i));
            ip(&["-n", &ns, "addr", "add", &g, "dev", "gossip"]);
            ip(&["-n", &ns, "link", "set", "gossip", "up"]);
            // ctl: member <-> the test's namespace
            ip(&[
                "link", "add", &root_end, "type", "veth", "peer", "name", "ctl", "netns", &ns,
            ]);
            let c = me.ctl_net;
            ip(&["addr", "add", &format!("10.{c}.{i}.1/30"), "dev", &root_end]);
            ip(&["link", "set", &root_end, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.{c}.{i}.2/30"),
                "dev",
                "ctl",
            ]);
            ip(&["-n", &ns, "link", "set", "ctl", "up"]);
            // The test's addresses (the instances' among them) via ctl.
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                &format!("10.{c}.0.0/16"),
                "via",
                &format!("10.{c}.{i}.1"),
            ]);
        }
        me
    }

    /// Member `i`'s namespace.
    pub fn namespace(&self, i: usize) -> String {
        format!("{}-m{i}", self.tag)
    }

    fn root_link(&self, i: usize) -> String {
        format!("{}c{i}", self.tag)
    }

    /// Member `i`'s address on the gossip bridge.
    pub fn gossip_ip(&self, i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.gossip_net, 0, i as u8 + 1))
    }

    /// Member `i`'s address on its link to the test (its proxy and admin
    /// API listen there).
    pub fn ctl_ip(&self, i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.ctl_net, i as u8, 2))
    }

    /// An address of the test's namespace every member reaches: instances
    /// the test starts listen there.
    pub fn host(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, self.ctl_net, 0, 1)), 0)
    }

    /// Cuts member `i` off the gossip bridge.
    pub fn cut(&self, i: usize) {
        ip(&["-n", &self.hub, "link", "set", &format!("p{i}"), "down"]);
    }

    /// Puts member `i` back on the gossip bridge.
    pub fn heal(&self, i: usize) {
        ip(&["-n", &self.hub, "link", "set", &format!("p{i}"), "up"]);
    }

    fn remove(&self) {
        for i in 0..self.members {
            ip_quiet(&["link", "del", &self.root_link(i)]);
            ip_quiet(&["netns", "del", &self.namespace(i)]);
        }
        ip_quiet(&["netns", "del", &self.hub]);
    }
}

impl Drop for Partitionable {
    fn drop(&mut self) {
        self.remove();
    }
}

//! A throwaway network lab in namespaces, for tests that make real traffic.
//!
//! ```text
//!   out (192.0.2.2) ── vo ─┐                         ┌─ v1 ── ns1 (172.18.0.2)
//!                          host (192.0.2.1, 198.51.100.1) br0 172.18.0.1
//!   ns3 (10.77.0.2) ── v3 ─┘  10.77.0.1                └─ v2 ── ns2 (172.18.0.3)
//! ```
//!
//! `host` plays the host nsport runs on; nothing touches the real host's namespace. Every
//! namespace has a unique name and is deleted when the `Lab` is dropped, even on panic.
//! `out` and `ns2` route 127.0.0.0/8 to the host and accept replies from it, as an attacker
//! would, so that tests can prove the loopback guard holds.
#![allow(dead_code)]

pub mod invariants;
pub mod soak;
pub mod start_up_order;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

pub const HOST_OUT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const HOST_OUT2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const HOST_BR: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
pub const HOST_V3: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const OUT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const NS1: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
pub const NS2: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);
pub const NS3: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// The IPv6 addresses of a dual-stack lab (`Lab::dual_stack`).
pub mod v6 {
    use std::net::Ipv6Addr;
    pub const HOST_OUT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    pub const HOST_OUT2: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);
    pub const HOST_BR: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
    pub const HOST_V3: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 1);
    pub const OUT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    pub const NS1: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
    pub const NS2: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 3);
    pub const NS3: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 2);
}

/// How long a probe waits for an answer; a dropped packet costs this much.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

static LABS: AtomicUsize = AtomicUsize::new(0);

/// Runs a command and panics with its output if it fails.
pub fn sh(args: &[&str]) -> Output {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub struct Lab {
    prefix: String,
    roles: Vec<&'static str>,
}

pub enum BrNetfilter {
    On,
    Off,
}

impl Lab {
    /// The same lab with IPv6 as well: 2001:db8::/64 outside (host ::1, a second host
    /// address 2001:db8:ff::1), 2001:db8:1::/64 on the bridge, 2001:db8:3::/64 on v3.
    pub fn dual_stack(br_netfilter: BrNetfilter) -> Lab {
        let lab = Lab::new(br_netfilter);
        for (role, iface, addr, gateway) in [
            ("ns1", "eth0", "2001:db8:1::2/64", "2001:db8:1::1"),
            ("ns2", "eth0", "2001:db8:1::3/64", "2001:db8:1::1"),
            ("ns3", "eth0", "2001:db8:3::2/64", "2001:db8:3::1"),
            ("out", "eth0", "2001:db8::2/64", "2001:db8::1"),
        ] {
            lab.ip(role, &format!("addr add {addr} dev {iface} nodad"));
            lab.ip(role, &format!("-6 route add default via {gateway}"));
        }
        for (iface, addr) in [
            ("br0", "2001:db8:1::1/64"),
            ("v3", "2001:db8:3::1/64"),
            ("vo", "2001:db8::1/64"),
            ("vo", "2001:db8:ff::1/64"),
        ] {
            lab.ip("host", &format!("addr add {addr} dev {iface} nodad"));
        }
        lab
    }

    /// Builds the whole lab; `br_netfilter` sets the host's bridge-nf-call-iptables.
    pub fn new(br_netfilter: BrNetfilter) -> Lab {
        let prefix = format!(
            "nsp{}x{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::SeqCst)
        );
        let lab = Lab {
            prefix,
            // `empty` has no interface but its loopback: a namespace with no address.
            roles: vec!["host", "ns1", "ns2", "ns3", "out", "empty"],
        };
        for role in &lab.roles {
            sh(&["ip", "netns", "add", &lab.ns(role)]);
            // Link-local addresses are usable at once, without duplicate detection.
            lab.write_sysctl(role, "net/ipv6/conf/default/accept_dad", "0");
            lab.write_sysctl(role, "net/ipv6/conf/all/accept_dad", "0");
        }
        let ip = |role: &str, cmd: &str| {
            let mut args = vec!["ip", "-n"];
            let ns = lab.ns(role);
            args.push(&ns);
            args.extend(cmd.split_whitespace());
            sh(&args);
        };
        for role in ["host", "ns1", "ns3"] {
            ip(role, "link set lo up");
        }
        ip("host", "link add br0 type bridge");
        ip("host", "addr add 172.18.0.1/24 dev br0");
        ip("host", "link set br0 up");
        for (port, role, addr, gateway) in [
            ("v1", "ns1", "172.18.0.2/24", "172.18.0.1"),
            ("v2", "ns2", "172.18.0.3/24", "172.18.0.1"),
            ("v3", "ns3", "10.77.0.2/30", "10.77.0.1"),
            ("vo", "out", "192.0.2.2/24", "192.0.2.1"),
        ] {
            ip(
                "host",
                &format!(
                    "link add {port} type veth peer name eth0 netns {}",
                    lab.ns(role)
                ),
            );
            ip(role, &format!("addr add {addr} dev eth0"));
            ip(role, "link set eth0 up");
            ip(role, &format!("route add default via {gateway}"));
            if port.starts_with("v1") || port.starts_with("v2") {
                ip("host", &format!("link set {port} master br0"));
            }
            ip("host", &format!("link set {port} up"));
        }
        ip("host", "addr add 10.77.0.1/30 dev v3");
        ip("host", "addr add 192.0.2.1/24 dev vo");
        ip("host", "addr add 198.51.100.1/24 dev vo");
        // The attackers: 127/8 goes to the host, and replies from 127/8 are accepted.
        for (role, gateway) in [("ns2", "172.18.0.1"), ("out", "192.0.2.1")] {
            ip(role, &format!("route add 127.0.0.0/8 via {gateway}"));
            lab.write_sysctl(role, "net/ipv4/conf/all/route_localnet", "1");
            lab.write_sysctl(role, "net/ipv4/conf/eth0/route_localnet", "1");
        }
        let value = match br_netfilter {
            BrNetfilter::On => "1",
            BrNetfilter::Off => "0",
        };
        lab.write_sysctl("host", "net/bridge/bridge-nf-call-iptables", value);
        assert_eq!(
            lab.read_sysctl("host", "net/bridge/bridge-nf-call-iptables"),
            value
        );
        // Nothing is forwarded until nsport turns forwarding on.
        assert_eq!(lab.read_sysctl("host", "net/ipv4/ip_forward"), "0");
        lab
    }

    /// Adds a namespace with no interfaces, deleted with the lab.
    pub fn add_namespace(&mut self, role: &'static str) {
        sh(&["ip", "netns", "add", &self.ns(role)]);
        self.roles.push(role);
    }

    /// Deletes one of the lab's namespaces before the lab goes.
    pub fn ip_netns_del(&self, role: &str) {
        sh(&["ip", "netns", "del", &self.ns(role)]);
    }

    /// The namespace name of a role.
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// Replaces this lab's unique names with the roles alone, for comparing with files.
    pub fn normalize(&self, text: &str) -> String {
        text.replace(&format!("{}-", self.prefix), "")
    }

    pub fn run_in<T: Send>(&self, role: &str, work: impl FnOnce() -> T + Send) -> T {
        let file = File::open(format!("/run/netns/{}", self.ns(role))).expect("lab namespace");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                    work()
                })
                .join()
                .expect("no panic in the namespace")
        })
    }

    pub fn read_sysctl(&self, role: &str, key: &str) -> String {
        self.run_in(role, || {
            std::fs::read_to_string(format!("/proc/sys/{key}"))
                .unwrap_or_else(|e| panic!("{key}: {e}"))
                .trim()
                .to_string()
        })
    }

    pub fn write_sysctl(&self, role: &str, key: &str, value: &str) {
        self.run_in(role, || {
            std::fs::write(format!("/proc/sys/{key}"), value)
                .unwrap_or_else(|e| panic!("{key}: {e}"))
        })
    }

    /// Where nsport keeps its record of changed settings for this lab.
    pub fn state_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("{}-state", self.prefix))
    }

    /// Runs the nsport binary in the host namespace.
    pub fn nsport(&self, args: &[&str]) -> Output {
        let mut command = Command::new("ip");
        command
            .env("NSPORT_STATE_DIR", self.state_dir())
            .args(["netns", "exec", &self.ns("host")])
            .arg(env!("CARGO_BIN_EXE_nsport"))
            .args(args);
        command.output().expect("run nsport")
    }

    /// Starts nsport in the host namespace without waiting for it.
    pub fn spawn_nsport(&self, args: &[&str]) -> std::process::Child {
        Command::new("ip")
            .env("NSPORT_STATE_DIR", self.state_dir())
            .args(["netns", "exec", &self.ns("host")])
            .arg(env!("CARGO_BIN_EXE_nsport"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start nsport")
    }

    /// Runs `ip -n NS ARGS…` in a role's namespace.
    pub fn ip(&self, role: &str, args: &str) {
        let ns = self.ns(role);
        let mut full = vec!["ip", "-n", &ns];
        full.extend(args.split_whitespace());
        sh(&full);
    }

    /// Runs `ip` in `role` and returns what it printed.
    pub fn ip_output(&self, role: &str, args: &str) -> String {
        let ns = self.ns(role);
        let mut full = vec!["ip", "-n", &ns];
        full.extend(args.split_whitespace());
        String::from_utf8_lossy(&sh(&full).stdout).into_owned()
    }

    /// Takes the host namespace's writer lock (made by the lab's first change) as another
    /// nsport would, and holds it until the holder is dropped.
    pub fn hold_writer_lock(&self) -> WriterLockHolder {
        use std::os::unix::fs::MetadataExt;
        let lock = std::fs::read_dir(self.state_dir())
            .unwrap()
            .flatten()
            .map(|entry| entry.path())
            .find(|path| path.extension().is_some_and(|e| e == "lock"))
            .expect("the writer lock's file");
        let inode = std::fs::metadata(&lock).unwrap().ino();
        // `-o`: the lock stays with flock itself, which lets go when `cat` ends with its
        // input.
        let process = Command::new("flock")
            .arg("-o")
            .arg(&lock)
            .arg("cat")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let holder = WriterLockHolder { process, inode };
        holder.wait_for(|line| !line.contains("->"), "flock never took the lock");
        holder
    }

    /// Runs nsport with `args` while the writer lock is held, runs `meanwhile` once the
    /// command waits on the lock (it has read what it reads before taking it), then lets
    /// the lock go and returns the command's output.
    pub fn nsport_waiting_on_lock(&self, args: &[&str], meanwhile: impl FnOnce()) -> Output {
        let holder = self.hold_writer_lock();
        let waiting = self.spawn_nsport(args);
        holder.wait_for_a_waiter();
        meanwhile();
        drop(holder);
        waiting.wait_with_output().unwrap()
    }

    /// The hairpin mode of bridge port `port` in the host namespace, as `ip -d link`
    /// shows it: "hairpin on" or "hairpin off".
    pub fn hairpin_mode(&self, port: &str) -> String {
        let text = self.ip_output("host", &format!("-d link show {port}"));
        let at = text.find("hairpin ").expect("a bridge port");
        text[at..]
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs nsport and asserts success; returns stdout.
    pub fn nsport_ok(&self, args: &[&str]) -> String {
        let output = self.nsport(args);
        assert!(
            output.status.success(),
            "nsport {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs the real nft binary in a namespace: an independent reader of what nsport wrote.
    pub fn nft(&self, role: &str, args: &str) -> String {
        let mut full = vec!["ip", "netns", "exec"];
        let ns = self.ns(role);
        full.push(&ns);
        full.push("nft");
        full.extend(args.split_whitespace());
        String::from_utf8(sh(&full).stdout).unwrap()
    }

    /// The whole ruleset, with counter values left out: traffic changes them, and a
    /// comparison of before and after is about what is configured.
    pub fn ruleset(&self) -> String {
        without_counter_values(&self.nft("host", "list ruleset"))
    }

    /// A TCP server in `role` that answers each connection with the address it came from.
    pub fn serve_tcp(&self, role: &str, bind: impl Into<IpAddr>, port: u16) -> Server {
        self.serve_tcp_at(role, SocketAddr::from((bind.into(), port)))
    }

    /// The same on a socket address, which may carry an IPv6 scope.
    pub fn serve_tcp_at(&self, role: &str, at: SocketAddr) -> Server {
        let listener = self.run_in(role, || bind_again_while_in_use(at));
        listener.set_nonblocking(true).unwrap();
        Server::spawn(move |stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        stream.set_nonblocking(false).unwrap();
                        let _ = stream.write_all(peer.ip().to_string().as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        })
    }

    /// A TCP server in `role` on every IPv4 and IPv6 address that answers each connection
    /// with `name`: which of several servers a published port led to.
    pub fn serve_tcp_named(&self, role: &str, port: u16, name: &'static str) -> Server {
        let listener = self.run_in(role, || TcpListener::bind((ANY, port)).expect("bind"));
        listener.set_nonblocking(true).unwrap();
        Server::spawn(move |stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let _ = stream.write_all(name.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        })
    }

    /// A UDP server in `role` that answers each datagram with the address it came from.
    pub fn serve_udp(&self, role: &str, bind: impl Into<IpAddr>, port: u16) -> Server {
        let bind = bind.into();
        let socket = self.run_in(role, || UdpSocket::bind((bind, port)).expect("bind"));
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        Server::spawn(move |stop| {
            let mut buf = [0; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(peer.ip().to_string().as_bytes(), peer);
                }
            }
        })
    }

    /// Connects from `role` and returns what the server said (the client address it saw),
    /// or `None` when nothing answered.
    pub fn tcp(&self, role: &str, addr: impl Into<IpAddr>, port: u16) -> Option<String> {
        let addr = addr.into();
        self.run_in(role, || {
            let target = SocketAddr::from((addr, port));
            let mut stream = TcpStream::connect_timeout(&target, PROBE_TIMEOUT).ok()?;
            stream.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).ok()?;
            Some(answer)
        })
    }

    /// A UDP socket in `role` on an unspecified port, to keep one flow going.
    pub fn udp_socket(&self, role: &str) -> UdpSocket {
        let socket = self.run_in(role, || {
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap()
        });
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        socket
    }

    /// Sends a datagram from `role` and returns the answer, if any.
    pub fn udp(&self, role: &str, addr: impl Into<IpAddr>, port: u16) -> Option<String> {
        let addr = addr.into();
        self.run_in(role, || {
            let any: IpAddr = match addr {
                IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            };
            let socket = UdpSocket::bind((any, 0)).unwrap();
            socket.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
            socket.send_to(b"?", (addr, port)).ok()?;
            let mut buf = [0; 64];
            let (len, _) = socket.recv_from(&mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf[..len]).into_owned())
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.state_dir());
        for role in &self.roles {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .output();
        }
    }
}

/// Helpers added for the concurrency, crash and transaction tests; they only add to the
/// lab above and change none of its helpers.
impl Lab {
    /// The command that runs nsport in the host namespace with this lab's state directory;
    /// callers may change its environment (another state directory) or its stdio.
    pub fn nsport_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .env("NSPORT_STATE_DIR", self.state_dir())
            .args(["netns", "exec", &self.ns("host")])
            .arg(env!("CARGO_BIN_EXE_nsport"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    }

    /// Adds namespace `role` behind the host's bridge br0 through veth `port`, at `addr`/24
    /// with 172.18.0.1 as its gateway, like ns1 and ns2. When the namespace was deleted
    /// (to recreate one of the same name), it is made again with the same name, port and
    /// address.
    pub fn bridge_namespace(&mut self, role: &'static str, port: &str, addr: Ipv4Addr) {
        let ns = self.ns(role);
        if !std::path::Path::new(&format!("/run/netns/{ns}")).exists() {
            sh(&["ip", "netns", "add", &ns]);
        }
        if !self.roles.contains(&role) {
            self.roles.push(role);
        }
        // A deleted namespace goes away in the background, and its veth pair with it: wait
        // (boundedly) until the old host side is gone before making one of the same name.
        let host = self.ns("host");
        for _ in 0..500 {
            let gone = !Command::new("ip")
                .args(["-n", &host, "link", "show", port])
                .output()
                .expect("ip")
                .status
                .success();
            if gone {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.ip(
            "host",
            &format!("link add {port} type veth peer name eth0 netns {ns}"),
        );
        self.ip(role, "link set lo up");
        self.ip(role, &format!("addr add {addr}/24 dev eth0"));
        self.ip(role, "link set eth0 up");
        self.ip(role, "route add default via 172.18.0.1");
        self.ip("host", &format!("link set {port} master br0"));
        self.ip("host", &format!("link set {port} up"));
    }

    /// The inode of a role's namespace, as nsport records it (`ino=` in the comment).
    pub fn netns_inode(&self, role: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.ns(role)))
            .expect("lab namespace")
            .ino()
    }

    /// Loads a table kept as a fixture (`nft/v3/ranges.nft`: as the golden files are, with
    /// `netns=ns1 ino=INODE` for the lab's namespace) into the host, in place of any table
    /// of the name, as an older nsport would have left it. Returns the table as loaded.
    pub fn load_fixture(&self, path: &str) -> String {
        let table = read_fixture(path).replace(
            "netns=ns1 ino=INODE",
            &format!("netns={} ino={}", self.ns("ns1"), self.netns_inode("ns1")),
        );
        assert!(!table.contains("INODE"), "{table}");
        let file = TempFile(self.state_dir().with_extension("fixture.nft"));
        std::fs::write(
            &file.0,
            format!("table inet nsport\ndelete table inet nsport\n{table}"),
        )
        .unwrap();
        self.nft("host", &format!("-f {}", file.0.display()));
        table
    }

    /// `ls --json`'s rows, each as text without what a migration starts again or changes
    /// (the counters, and the problem: a migration turns route_localnet on), sorted.
    pub fn rows_but_counters(&self) -> Vec<String> {
        let listing: serde_json::Value =
            serde_json::from_str(&self.nsport_ok(&["ls", "--json"])).unwrap();
        let mut rows: Vec<String> = listing
            .as_array()
            .unwrap()
            .iter()
            .cloned()
            .map(|mut row| {
                let fields = row.as_object_mut().unwrap();
                for field in ["packets", "bytes", "problem"] {
                    fields.remove(field);
                }
                row.to_string()
            })
            .collect();
        rows.sort();
        rows
    }

    /// The command that runs a CNI plugin (nsport or one of Debian's) in the host
    /// namespace, as libcni would: CNI_* in the environment, the configuration on stdin
    /// (written by `cni_spawn`). `netns` is a namespace name under /run/netns.
    pub fn cni_command(
        &self,
        program: &str,
        command: &str,
        container: &str,
        netns: &str,
    ) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns("host"), program])
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", format!("/run/netns/{netns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PLUGINS)
            .env("NSPORT_STATE_DIR", self.state_dir())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    }

    /// Starts a CNI plugin with `config` on its stdin, which is then closed.
    pub fn cni_spawn(
        &self,
        program: &str,
        command: &str,
        container: &str,
        netns: &str,
        config: &serde_json::Value,
    ) -> std::process::Child {
        let mut child = self
            .cni_command(program, command, container, netns)
            .spawn()
            .expect("start a CNI plugin");
        // A plugin killed early closes its end; the write may fail then, which is fine.
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(config.to_string().as_bytes());
        child
    }

    /// Runs a CNI plugin to the end.
    pub fn cni(
        &self,
        program: &str,
        command: &str,
        container: &str,
        netns: &str,
        config: &serde_json::Value,
    ) -> Output {
        self.cni_spawn(program, command, container, netns, config)
            .wait_with_output()
            .unwrap()
    }

    /// Attaches namespace `netns` to the lab's cni0 bridge (10.22.0.0/24) with Debian's
    /// `bridge` and `host-local` plugins; returns their result, the `prevResult` nsport
    /// gets.
    pub fn cni_attach(&self, container: &str, netns: &str) -> serde_json::Value {
        let config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "labnet",
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "subnet": "10.22.0.0/24",
                "dataDir": self.state_dir().join("ipam"),
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        });
        let output = self.cni(
            &format!("{CNI_PLUGINS}/bridge"),
            "ADD",
            container,
            netns,
            &config,
        );
        assert!(
            output.status.success(),
            "bridge ADD: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Whether a neighbour namespace (ns2, which routes 127/8 to the host) can read a
    /// service bound to the host namespace's 127.0.0.1: what the guard must prevent.
    pub fn neighbour_reads_host_loopback(&self) -> bool {
        self.reads_host_loopback("ns2")
    }

    /// Whether `role` can read a service bound to the host namespace's 127.0.0.1.
    pub fn reads_host_loopback(&self, role: &str) -> bool {
        let _secret = self.serve_tcp("host", LOCALHOST, SECRET_PORT);
        self.tcp(role, LOCALHOST, SECRET_PORT).is_some()
    }

    /// Makes `role` an attacker like ns2 and out: it routes 127.0.0.0/8 to the host
    /// through `gateway` and accepts replies from 127/8. Its loopback goes down without
    /// its address (a downed loopback keeps its local routes), so 127/8 is not local there.
    pub fn make_attacker(&self, role: &str, gateway: Ipv4Addr) {
        self.ip(role, "link set lo down");
        self.ip(role, "addr flush dev lo");
        self.ip(role, &format!("route add 127.0.0.0/8 via {gateway}"));
        self.write_sysctl(role, "net/ipv4/conf/all/route_localnet", "1");
        self.write_sysctl(role, "net/ipv4/conf/eth0/route_localnet", "1");
    }
}

/// Binds a listener on `at`, trying again for a while when the port is still in use. A
/// server of a moment before on the same port may be closed and yet listening: a command
/// another test thread is starting holds a copy of every descriptor between its fork and
/// its exec (close-on-exec closes them only at the exec), which on a loaded machine lasts
/// milliseconds. Seen once in CI, as `bind: AddrInUse` for 127.0.0.1:7000 (SECRET_PORT).
fn bind_again_while_in_use(at: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match TcpListener::bind(at) {
            Ok(listener) => return listener,
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => panic!("bind {at}: {error}"),
        }
    }
}

/// A file removed when dropped, even on panic.
/// A file of the repository, by its path there (`nft/ranges.nft`).
pub fn read_fixture(path: &str) -> String {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub struct TempFile(pub std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where Debian installs the CNI plugins.
pub const CNI_PLUGINS: &str = "/usr/lib/cni";

/// The port of the host-loopback-only service that neighbours must never reach.
pub const SECRET_PORT: u16 = 7000;

/// A server thread, stopped and joined on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn spawn(serve: impl FnOnce(&AtomicBool) + Send + 'static) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || serve(&flag));
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `counter packets N bytes M` becomes `counter`.
pub fn without_counter_values(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("counter packets ") {
        out.push_str(&rest[..at + "counter".len()]);
        let after = &rest[at + "counter packets ".len()..];
        let after = after.trim_start_matches(|c: char| c.is_ascii_digit());
        let after = after.strip_prefix(" bytes ").unwrap_or(after);
        rest = after.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

pub fn some(addr: impl Into<IpAddr>) -> Option<String> {
    Some(addr.into().to_string())
}

/// A TCP server on every address of both families, `[::]` without IPV6_V6ONLY.
pub const ANY: std::net::Ipv6Addr = std::net::Ipv6Addr::UNSPECIFIED;

/// Replaces namespace inodes, which differ from run to run, with `INODE`.
pub fn hide_inodes(table: &str) -> String {
    let mut out = String::new();
    let mut rest = table;
    while let Some(at) = rest.find("ino=") {
        out.push_str(&rest[..at + 4]);
        rest = rest[at + 4..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push_str("INODE");
    }
    out.push_str(rest);
    out
}

/// Puts the elements of every `elements = { … }` block one per line, sorted.
pub fn sort_elements(table: &str) -> String {
    let mut out = String::new();
    let mut lines = table.lines();
    while let Some(line) = lines.next() {
        let Some((indent, first)) = line.split_once("elements = { ") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let mut body = first.to_string();
        while !body.ends_with(" }") {
            body.push(' ');
            body.push_str(lines.next().expect("unterminated elements").trim());
        }
        let body = body.strip_suffix(" }").unwrap();
        let mut elements: Vec<&str> = body.split(", ").map(str::trim).collect();
        elements.sort();
        let continuation = format!(",\n{indent}             ");
        out.push_str(&format!(
            "{indent}elements = {{ {} }}\n",
            elements.join(&continuation)
        ));
    }
    out
}

/// The writer lock held by a `flock` process (`Lab::hold_writer_lock`).
pub struct WriterLockHolder {
    process: std::process::Child,
    inode: u64,
}

impl WriterLockHolder {
    /// Waits until a process is queued for the lock: an nsport change that read what it
    /// reads before the lock (targets, bridge ports) and now waits.
    pub fn wait_for_a_waiter(&self) {
        self.wait_for(
            |line| line.contains("->"),
            "nothing ever waited for the lock",
        );
    }

    /// Waits until /proc/locks has a line of this lock that `matches`.
    fn wait_for(&self, matches: impl Fn(&str) -> bool, never: &str) {
        let started = Instant::now();
        let of_this_lock = format!(":{} ", self.inode);
        while !std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|line| line.contains(&of_this_lock) && matches(line))
        {
            assert!(started.elapsed() < Duration::from_secs(30), "{never}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for WriterLockHolder {
    fn drop(&mut self) {
        drop(self.process.stdin.take());
        let _ = self.process.wait();
    }
}

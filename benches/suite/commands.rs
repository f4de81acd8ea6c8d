//! Starting the contenders: nsport, nft, iptables, timed from the calling thread's namespace.

use std::fmt::Write as _;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::lab::Lab;

pub const NSPORT: &str = env!("CARGO_BIN_EXE_nsport");

/// Rounds of alternation for comparisons of single commands.
pub const ROUNDS: usize = 31;

/// A command run from the current thread's namespace; panics on failure.
pub fn run(lab: &Lab, program: &str, args: &[&str]) -> Duration {
    run_with_input(lab, program, args, None)
}

pub fn run_with_input(lab: &Lab, program: &str, args: &[&str], input: Option<&str>) -> Duration {
    let mut command = Command::new(program);
    command
        .args(args)
        .env("NSPORT_STATE_DIR", lab.state_dir())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = command.spawn().unwrap_or_else(|e| panic!("{program}: {e}"));
    if let Some(input) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let took = start.elapsed();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    took
}

/// `N` Docker-style DNAT rules in chain DOCKER of table ip nat, loaded in one restore.
pub fn docker_rules(ports: impl Iterator<Item = u16>, target: &str) -> String {
    let mut rules = String::from("*nat\n:DOCKER - [0:0]\n");
    for port in ports {
        let _ = writeln!(
            rules,
            "-A DOCKER ! -i br0 -p tcp -m tcp --dport {port} -j DNAT --to-destination {target}:{port}"
        );
    }
    rules.push_str("COMMIT\n");
    rules
}

/// Docker's chain, reached from PREROUTING for local destinations.
pub fn docker_chain(lab: &Lab) {
    run(lab, "iptables", &["-t", "nat", "-N", "DOCKER"]);
    run(
        lab,
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            "DOCKER",
        ],
    );
}

/// The arguments of `iptables` adding Docker's rule for one port.
pub fn docker_add(port: u16) -> Vec<String> {
    format!(
        "-t nat -A DOCKER ! -i br0 -p tcp -m tcp --dport {port} -j DNAT --to-destination 10.77.0.2:{port}"
    )
    .split(' ')
    .map(String::from)
    .collect()
}

/// The empty nsport table, as nft syntax, read from nsport itself.
pub fn nsport_script() -> String {
    nsport::ruleset::table_script()
        .lines()
        .skip(3)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `n` host ports from 10000 on, each to the next port: a shifted range, which nsport keeps
/// as one element per port, so the table really holds `n` mappings (an identity range would
/// be one interval element).
pub fn per_port(n: u32) -> String {
    format!("10000-{}:10001-{}", 10000 + n - 1, 10000 + n)
}

/// Forgets the flows the calling thread's namespace tracks, once the lab's interfaces are
/// quiet. A removal forgets the flows of what it removed, and when the namespace tracks any
/// flow at all that means walking every bucket of the host's conntrack table (262,144
/// here): 10 ms, after which the next publish runs with cold caches (0.29–0.34 ms against
/// 0.13–0.18 ms, measured). A row that measures something else than that walk calls this
/// first. The lab's interfaces announce their multicast groups (IGMP reports, which
/// conntrack keeps 10 minutes) for a few seconds after they come up.
pub fn forget_tracked_flows() {
    use nsport::netlink::conntrack;
    for _ in 0..10 {
        conntrack::delete_flows(|_| true).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        if conntrack::tracked_in_this_namespace().unwrap_or(0) == 0 {
            return;
        }
    }
    eprintln!(
        "bench: the lab's namespace still tracks flows; the removals of the next rows walk them"
    );
}

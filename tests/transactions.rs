//! Protections checked by content, metadata refreshed on re-publish, exact exit codes
//! (issue 10). Each test makes real traffic in a fresh lab (see `lab/mod.rs`) and judges
//! the kernel's state with the invariant checker (`lab/invariants.rs`).

mod lab;

use lab::invariants::{self, Table};
use lab::*;
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::Output;

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_string()
}

/// `doctor` either repaired what was broken (`repaired`) or reports it: a failing exit
/// and a FAIL line naming `what`, not an "ok" line for it.
fn doctor_repairs_or_reports(lab: &Lab, what: &str, repaired: impl Fn() -> bool) -> Option<String> {
    let output = lab.nsport(&["doctor"]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let reported = !output.status.success()
        && stdout
            .lines()
            .any(|line| line.starts_with("FAIL") && line.contains(what));
    if repaired() || reported {
        None
    } else {
        Some(format!(
            "doctor neither repaired nor reported the {what} (exit {:?}):\n{stdout}",
            output.status.code()
        ))
    }
}

/// Issue 10: `nft flush chain inet nsport guard` empties the guard, and an edit leaves a
/// guard that drops the wrong thing. `doctor` repairs or reports it; the next `ls` and
/// `add` repair it (and say so), and a neighbour cannot read the host's 127.0.0.1.
#[test]
fn emptied_or_edited_guard_is_repaired() {
    let lab = Lab::new(BrNetfilter::Off);
    let _ns1 = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "3000"]);
    assert!(!lab.neighbour_reads_host_loopback());
    let guard_intact = || Table::read(&lab).is_some_and(|t| t.guard_problem().is_none());
    let mut violations = Vec::new();
    let breakages = [
        ("emptied", vec!["flush chain inet nsport guard"]),
        (
            "edited",
            vec![
                "flush chain inet nsport guard",
                "add rule inet nsport guard iifname != \"lo\" ip daddr 127.0.0.2 drop",
            ],
        ),
    ];
    for (how, edits) in &breakages {
        for (i, next) in [
            vec!["doctor"],
            vec!["ls"],
            vec!["add", "--netns", &ns1, "3001:3000"],
        ]
        .iter()
        .enumerate()
        {
            for edit in edits {
                lab.nft("host", edit);
            }
            // Precondition: the hole is real.
            assert!(
                lab.neighbour_reads_host_loopback(),
                "{how}: no hole to repair"
            );
            if next[0] == "doctor" {
                violations.extend(doctor_repairs_or_reports(&lab, "guard", guard_intact));
                continue;
            }
            let output = lab.nsport(next);
            if !output.status.success() {
                violations.push(format!("{how} guard, {next:?} failed: {}", stderr(&output)));
            }
            if !guard_intact() {
                let problem = Table::read(&lab).and_then(|t| t.guard_problem());
                violations.push(format!("{how} guard, after {next:?}: {problem:?}"));
            }
            if !stderr(&output).contains("guard") {
                violations.push(format!(
                    "{how} guard, {next:?} did not say it repaired the guard: {:?}",
                    stderr(&output)
                ));
            }
            if lab.neighbour_reads_host_loopback() {
                violations.push(format!(
                    "{how} guard, after {next:?} ({i}): ns2 reads the host's 127.0.0.1"
                ));
            }
        }
    }
    // Once repaired, doctor says so.
    let output = lab.nsport(&["doctor"]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !stdout
        .lines()
        .any(|l| l.starts_with("ok") && l.contains("guard"))
    {
        violations.push(format!("doctor after the repairs:\n{stdout}"));
    }
    violations.extend(invariants::check(&lab));
    invariants::assert_none(&violations, "an emptied or edited guard chain");
}

/// Issue 10: the `forward` chain (which keeps outside hosts from a published namespace's
/// unpublished ports) emptied, or edited to let everything through. `doctor` repairs or
/// reports it; the next `ls` and `add` put back exactly the rules nsport wrote.
#[test]
fn emptied_or_edited_forward_chain_is_repaired() {
    let lab = Lab::new(BrNetfilter::Off);
    let _ns1 = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    let _private = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 2222);
    // The outside neighbour routes the namespaces' subnet through the host.
    lab.ip("out", "route add 172.18.0.0/24 via 192.0.2.1");
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "3000"]);
    assert_eq!(lab.tcp("out", NS1, 2222), None);
    let written = Table::read(&lab).unwrap().rules["forward"].clone();
    let chain_intact = || Table::read(&lab).is_some_and(|t| t.rules["forward"] == written);
    let mut violations = Vec::new();
    let breakages = [
        ("emptied", vec!["flush chain inet nsport forward"]),
        (
            "edited",
            vec![
                "flush chain inet nsport forward",
                "add rule inet nsport forward ct state established,related accept",
                "add rule inet nsport forward accept",
            ],
        ),
    ];
    for (how, edits) in &breakages {
        for next in [
            vec!["doctor"],
            vec!["ls"],
            vec!["add", "--netns", &ns1, "3001:3000"],
        ] {
            for edit in edits {
                lab.nft("host", edit);
            }
            assert_eq!(
                lab.tcp("out", NS1, 2222),
                some(OUT),
                "{how}: no hole to repair"
            );
            if next[0] == "doctor" {
                violations.extend(doctor_repairs_or_reports(&lab, "forward", chain_intact));
                continue;
            }
            let output = lab.nsport(&next);
            if !output.status.success() {
                violations.push(format!(
                    "{how} forward, {next:?} failed: {}",
                    stderr(&output)
                ));
            }
            if !chain_intact() {
                violations.push(format!(
                    "{how} forward chain, after {next:?}: {:?}",
                    Table::read(&lab).map(|t| t.rules["forward"].clone())
                ));
            }
            if lab.tcp("out", NS1, 2222).is_some() {
                violations.push(format!(
                    "{how} forward chain, after {next:?}: ns1's unpublished 2222 is reachable"
                ));
            }
        }
    }
    violations.extend(invariants::check(&lab));
    invariants::assert_none(&violations, "an emptied or edited forward chain");
}

fn listing(lab: &Lab) -> Vec<Value> {
    let listing: Value = serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    listing.as_array().unwrap().clone()
}

/// Issue 10: a namespace deleted and made again under the same name (a restarted
/// container). Re-publishing the identical mapping refreshes its metadata (the
/// namespace's inode), so `prune` deletes nothing and the mapping stays reachable.
#[test]
fn republishing_after_the_namespace_was_recreated_refreshes_its_inode() {
    let mut lab = Lab::new(BrNetfilter::Off);
    let addr = Ipv4Addr::new(172, 18, 0, 10);
    lab.bridge_namespace("re", "v5", addr);
    let server = lab.serve_tcp("re", Ipv4Addr::UNSPECIFIED, 3000);
    let name = lab.ns("re");
    lab.nsport_ok(&["add", "--netns", &name, "3000"]);
    let old = lab.netns_inode("re");
    drop(server);
    // nsfs inodes are reused: a namespace made in between takes the freed one, and the
    // loop makes sure the new namespace really has another inode.
    let mut fillers = ["filler1", "filler2", "filler3", "filler4"].into_iter();
    loop {
        sh(&["ip", "netns", "del", &name]);
        lab.add_namespace(fillers.next().expect("a new inode within four tries"));
        lab.bridge_namespace("re", "v5", addr);
        if lab.netns_inode("re") != old {
            break;
        }
    }
    let new = lab.netns_inode("re");
    let _server = lab.serve_tcp("re", Ipv4Addr::UNSPECIFIED, 3000);
    // Precondition: the mapping is stale now (it names the old namespace).
    assert_eq!(listing(&lab)[0]["stale"], true, "{:?}", listing(&lab));
    lab.nsport_ok(&["add", "--netns", &name, "3000"]);
    let mut violations = Vec::new();
    let after = listing(&lab);
    if after.len() != 1 || after[0]["netns_inode"] != new || after[0]["stale"] != false {
        violations.push(format!(
            "after re-publishing: {after:?} (the namespace's inode is {new}, was {old})"
        ));
    }
    let comment = Table::read(&lab).map(|t| t.mappings[0].comment.clone());
    if !comment
        .as_deref()
        .is_some_and(|c| c.contains(&format!("ino={new}")))
    {
        violations.push(format!(
            "the element's comment is {comment:?}, not ino={new}"
        ));
    }
    let output = lab.nsport(&["prune"]);
    if !output.status.success() {
        violations.push(format!("prune failed: {}", stderr(&output)));
    }
    let left = listing(&lab).len();
    if left != 1 {
        violations.push(format!("prune deleted the live mapping: {left} left"));
    }
    if lab.tcp("out", HOST_OUT, 3000) != some(OUT) {
        violations.push("the re-published mapping is not reachable from outside".into());
    }
    violations.extend(invariants::check(&lab));
    invariants::assert_none(&violations, "re-publish after the namespace was recreated");
}

/// How many UDP flows the flood makes: `NSPORT_FLOOD_FLOWS`, by default the issue's
/// 230,000 (spread over source addresses and ports of the outside namespace).
fn flood_flows() -> usize {
    std::env::var("NSPORT_FLOOD_FLOWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(230_000)
}

/// Sends one datagram from each of `flows` source address and port pairs of `out` to the
/// host's 5353: each is a conntrack entry in the host namespace. Returns how many sent.
fn flood(lab: &Lab, flows: usize) -> usize {
    const PORTS: std::ops::Range<u16> = 10_000..60_000;
    let addrs = flows.div_ceil(PORTS.len());
    lab.run_in("out", || {
        let mut sent = 0;
        for a in 0..addrs {
            let src = Ipv4Addr::new(192, 0, 2, 10 + a as u8);
            for port in PORTS {
                if sent == flows {
                    return sent;
                }
                // A port some other socket holds is skipped: flows are counted, not ports.
                if let Ok(socket) = UdpSocket::bind(SocketAddrV4::new(src, port))
                    && socket.send_to(b"?", (HOST_OUT, 5353)).is_ok()
                {
                    sent += 1;
                }
            }
        }
        sent
    })
}

fn conntrack_count(lab: &Lab) -> usize {
    lab.read_sysctl("host", "net/netfilter/nf_conntrack_count")
        .parse()
        .unwrap()
}

/// Issue 10: many UDP flows to a published port (230k in the issue), then `rm` and `add`
/// of it. The exit code says whether the table changed: exit 0 and changed, or failure
/// and unchanged; never "changed, then exit 1" (ENOBUFS from one huge conntrack delete).
#[test]
fn udp_flood_then_add_and_rm_exit_code_matches_the_change() {
    let lab = Lab::new(BrNetfilter::Off);
    let ns1 = lab.ns("ns1");
    let flows = flood_flows();
    let addrs = flows.div_ceil(50_000);
    for a in 0..addrs {
        lab.ip("out", &format!("addr add 192.0.2.{}/24 dev eth0", 10 + a));
    }
    lab.nsport_ok(&["add", "--netns", &ns1, "5353:53/udp"]);
    let published =
        || Table::read(&lab).is_some_and(|t| t.mappings.iter().any(|m| m.host_port == 5353));
    let mut violations = Vec::new();
    for (args, wanted) in [
        (vec!["rm", "5353/udp"], false),
        (vec!["add", "--netns", &ns1, "5353:53/udp"], true),
    ] {
        let sent = flood(&lab, flows);
        let entries = conntrack_count(&lab);
        println!("{args:?} after {sent} datagrams: {entries} conntrack entries in the host");
        // Precondition: the flood made the many flows the scenario is about.
        assert!(entries >= 20_000, "only {entries} conntrack entries");
        let output = lab.nsport(&args);
        let changed = published() == wanted;
        println!(
            "{args:?}: exit {:?}, table changed {changed}: {}",
            output.status.code(),
            stderr(&output)
        );
        if output.status.success() != changed {
            violations.push(format!(
                "{args:?} with {entries} flows: exit {:?} but the table {} ({})",
                output.status.code(),
                if changed { "changed" } else { "did not change" },
                stderr(&output)
            ));
        }
    }
    violations.extend(invariants::check_state(&lab));
    invariants::assert_none(&violations, "add/rm with a UDP flood");
}

/// Everything nsport may change in the host namespace: the ruleset, forwarding and
/// route_localnet on every interface.
fn kernel_state(lab: &Lab) -> String {
    format!(
        "{}\nip_forward={}\nroute_localnet={:?}",
        lab.ruleset(),
        lab.read_sysctl("host", "net/ipv4/ip_forward"),
        invariants::route_localnet(lab)
    )
}

/// The lines only in `before` (`-`) and only in `after` (`+`).
fn line_diff(before: &str, after: &str) -> String {
    let only = |a: &str, b: &str, sign: char| -> Vec<String> {
        a.lines()
            .filter(|line| !b.lines().any(|other| other == *line))
            .map(|line| format!("{sign} {}", line.trim()))
            .collect()
    };
    let mut lines = only(before, after, '-');
    lines.extend(only(after, before, '+'));
    lines.join("\n")
}

/// Issue 10: `apply` of a file whose mapping names an interface that does not exist
/// (valid as a name, absent on the host) exits non-zero and changes nothing: not the
/// mapping, not the others the file would remove, not a sysctl.
#[test]
fn apply_with_a_bad_via_changes_nothing() {
    let lab = Lab::new(BrNetfilter::Off);
    let _ns1 = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    let saved: Vec<Value> = serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    let mut bad = saved[0].clone();
    bad["host_port"] = 3001.into();
    bad["to_addr"] = "10.77.0.2".into();
    bad["netns"] = Value::Null;
    bad["netns_inode"] = Value::Null;
    bad["via"] = "nosuch0".into();
    let file = TempFile(lab.state_dir().with_extension("apply.json"));
    let file = &file.0;
    let mut violations = Vec::new();
    let before = kernel_state(&lab);
    for (what, mappings) in [
        (
            "added beside the existing mapping",
            vec![saved[0].clone(), bad.clone()],
        ),
        ("replacing the existing mapping", vec![bad.clone()]),
    ] {
        std::fs::write(file, serde_json::to_string(&mappings).unwrap()).unwrap();
        let output = lab.nsport(&["apply", file.to_str().unwrap()]);
        println!(
            "apply, bad via {what}: exit {:?}: {}",
            output.status.code(),
            stderr(&output)
        );
        if output.status.success() {
            violations.push(format!("apply with a bad via {what} succeeded"));
        }
        let after = kernel_state(&lab);
        if after != before {
            violations.push(format!(
                "apply with a bad via {what} changed the host:\n{}",
                line_diff(&before, &after)
            ));
            // Put the host back for the next case.
            lab.nsport_ok(&["flush"]);
            lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
        }
    }
    violations.extend(invariants::check(&lab));
    invariants::assert_none(&violations, "apply with a bad via");
}

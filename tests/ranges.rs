//! Port ranges published as one interval element, with real traffic through the lab (see
//! `lab/mod.rs`): every port inside an identity range answers, at both ends too, and none
//! outside it does, on every path (from outside, from the host, through 127.0.0.1, hairpin;
//! TCP and UDP; IPv4 and IPv6); a single port inside a range is refused naming the range,
//! and the reverse; `rm` of a port inside a range cuts it, and its neighbours keep working.

mod lab;

use std::net::{IpAddr, Ipv6Addr};

use lab::*;
use serde_json::Value;

/// Just below, at the start, inside, at the end, and just above 20000-20099.
const BELOW: u16 = 19999;
const START: u16 = 20000;
const INSIDE: u16 = 20050;
const END: u16 = 20099;
const ABOVE: u16 = 20100;
const PORTS: [u16; 5] = [BELOW, START, INSIDE, END, ABOVE];

/// ns1 serves TCP and UDP on every port of `PORTS`, on both families (sockets on `[::]`
/// take IPv4 too).
fn servers(lab: &Lab) -> Vec<Server> {
    let mut servers = Vec::new();
    for port in PORTS {
        servers.push(lab.serve_tcp("ns1", Ipv6Addr::UNSPECIFIED, port));
        servers.push(lab.serve_udp("ns1", Ipv6Addr::UNSPECIFIED, port));
    }
    servers
}

/// The client address a server on `[::]` saw, as IPv4 when it is a mapped one.
fn client(answer: Option<String>) -> Option<String> {
    answer.map(|a| a.trim_start_matches("::ffff:").to_string())
}

fn listing(lab: &Lab) -> Vec<Value> {
    let text = lab.nsport_ok(&["ls", "--json"]);
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Whether `role` reaches port `port` of `addr` over `proto`.
fn reaches(lab: &Lab, role: &str, addr: IpAddr, port: u16, udp: bool) -> bool {
    match udp {
        true => lab.udp(role, addr, port).is_some(),
        false => lab.tcp(role, addr, port).is_some(),
    }
}

#[test]
fn an_identity_range_answers_inside_and_at_both_ends_and_nowhere_outside() {
    let lab = Lab::dual_stack(BrNetfilter::On);
    let _servers = servers(&lab);
    let ns1 = lab.ns("ns1");
    // Control: nothing reaches ns1's ports through the host before they are published.
    assert!(!reaches(&lab, "out", HOST_OUT.into(), INSIDE, false));
    assert!(!reaches(&lab, "out", HOST_OUT.into(), INSIDE, true));
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "20000-20099:20000-20099",
        "20000-20099:20000-20099/udp",
    ]);
    // One interval element per family and protocol, not 100 each.
    let rows = listing(&lab);
    assert_eq!(rows.len(), 4, "{rows:?}");
    for row in &rows {
        assert_eq!(row["host_port"], START);
        assert_eq!(row["host_port_end"], END);
        assert_eq!(row["to_port"], START);
        assert_eq!(row["to_port_end"], END);
    }
    let paths: [(&str, IpAddr); 6] = [
        ("out", HOST_OUT.into()),
        ("out", v6::HOST_OUT.into()),
        ("host", HOST_OUT.into()),
        ("host", LOCALHOST.into()),
        // Hairpin: the namespace reaches its own published ports through the host.
        ("ns1", HOST_BR.into()),
        ("ns1", v6::HOST_BR.into()),
    ];
    for (role, addr) in paths {
        for udp in [false, true] {
            for port in [START, INSIDE, END] {
                assert!(
                    reaches(&lab, role, addr, port, udp),
                    "{role} -> {addr}:{port} (udp: {udp})"
                );
            }
            for port in [BELOW, ABOVE] {
                assert!(
                    !reaches(&lab, role, addr, port, udp),
                    "{role} -> {addr}:{port} (udp: {udp}) is outside the range"
                );
            }
        }
    }
    // The destination port is kept: the answer came from the port asked for, which the
    // echo servers prove by answering at all (ns1 serves nothing else).
    assert_eq!(client(lab.tcp("out", HOST_OUT, INSIDE)), some(OUT));
    // Counters count per element: the range's element saw the traffic.
    let counted = listing(&lab)
        .iter()
        .filter(|row| row["proto"] == "tcp" && row["family"] == "ipv4")
        .map(|row| row["packets"].as_u64().unwrap())
        .sum::<u64>();
    assert!(counted > 0, "the range's counter counts its traffic");
}

#[test]
fn a_single_port_inside_a_range_is_refused_naming_the_range_and_the_reverse() {
    let lab = Lab::new(BrNetfilter::Off);
    let (ns1, ns2) = (lab.ns("ns1"), lab.ns("ns2"));
    lab.nsport_ok(&["add", "--netns", &ns1, "20000-20099:20000-20099"]);
    lab.nsport_ok(&["add", "--netns", &ns2, "8080:80"]);
    let before = lab.ruleset();
    let refused = |args: &[&str], names: &[&str]| {
        let output = lab.nsport(args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        for name in names {
            assert!(stderr.contains(name), "{args:?} names {name}: {stderr}");
        }
        assert_eq!(lab.ruleset(), before, "{args:?} changed nothing");
    };
    // A single port inside the range, to another namespace.
    refused(
        &["add", "--netns", &ns2, "20050:80"],
        &["20050/tcp", "172.18.0.2:20000-20099", "20000-20099/tcp"],
    );
    // At the range's ends.
    refused(&["add", "--netns", &ns2, "20000:80"], &["20000/tcp"]);
    refused(&["add", "--netns", &ns2, "20099:80"], &["20099/tcp"]);
    // A range over a single port.
    refused(
        &["add", "--netns", &ns1, "8000-8100:8000-8100"],
        &["8000-8100/tcp", "172.18.0.3:80", "8080/tcp"],
    );
    // A range across another's end, and one inside another.
    refused(
        &["add", "--netns", &ns2, "20090-20200:20090-20200"],
        &["20090-20200/tcp", "172.18.0.2:20000-20099"],
    );
    refused(
        &["add", "--netns", &ns2, "20010-20020:20010-20020"],
        &["172.18.0.2:20000-20099"],
    );
    // A range around another whole, which the kernel itself would take.
    refused(
        &["add", "--netns", &ns2, "19990-20120:19990-20120"],
        &["19990-20120/tcp", "172.18.0.2:20000-20099"],
    );
    // Two specs of one command that overlap.
    let output = lab.nsport(&["add", "--netns", &ns2, "9000-9010:9000-9010", "9005:80"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(lab.ruleset(), before);
    // A specific address inside the wildcard range overlaps it (Docker's rule): refused,
    // naming the range, unless forced.
    refused(
        &["add", "--netns", &ns2, "127.0.0.1:20050:80"],
        &["overlaps", "20000-20099/tcp"],
    );
    // UDP, beyond the range, or forced: no clash.
    lab.nsport_ok(&["add", "--netns", &ns2, "20050:80/udp"]);
    lab.nsport_ok(&["add", "--force", "--netns", &ns2, "127.0.0.1:20050:80"]);
    lab.nsport_ok(&["add", "--netns", &ns2, "20100:80"]);
    // Publishing the same range again to the same namespace refreshes it.
    lab.nsport_ok(&["add", "--netns", &ns1, "20000-20099:20000-20099"]);
    // Its ends removed and the whole published again: one element around what was left,
    // not two, so that a port inside goes by `rm` as before.
    lab.nsport_ok(&["rm", "127.0.0.1:20050", "20000", "20099"]);
    lab.nsport_ok(&["add", "--netns", &ns1, "20000-20099:20000-20099"]);
    let range4 = lab.nft("host", "list map inet nsport range4");
    assert_eq!(range4.matches(" . tcp ").count(), 1, "{range4}");
    lab.nsport_ok(&["rm", "20060"]);
}

#[test]
fn rm_of_a_middle_port_cuts_the_range_and_its_neighbours_keep_working() {
    let lab = Lab::new(BrNetfilter::On);
    let _servers = servers(&lab);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "20000-20099:20000-20099"]);
    let _neighbours = [INSIDE - 1, INSIDE + 1].map(|port| lab.serve_tcp("ns1", NS1, port));
    assert_eq!(client(lab.tcp("out", HOST_OUT, INSIDE)), some(OUT));
    lab.nsport_ok(&["rm", "20050"]);
    assert_eq!(
        client(lab.tcp("out", HOST_OUT, INSIDE)),
        None,
        "the port removed"
    );
    for port in [START, INSIDE - 1, INSIDE + 1, END] {
        assert_eq!(
            client(lab.tcp("out", HOST_OUT, port)),
            some(OUT),
            "port {port}"
        );
        assert_eq!(
            client(lab.tcp("host", LOCALHOST, port)),
            some(HOST_BR),
            "port {port}"
        );
    }
    let rows = listing(&lab);
    let sides: Vec<(u64, u64)> = rows
        .iter()
        .map(|row| {
            (
                row["host_port"].as_u64().unwrap(),
                row["host_port_end"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(sides, [(20000, 20049), (20051, 20099)]);
    // Publishing the whole range again to another target still clashes with the pieces...
    let before = lab.ruleset();
    let output = lab.nsport(&["add", "--to", "10.77.0.2", "20000-20099:20000-20099"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(lab.ruleset(), before);
    // ... and to the same target puts them back together: one element, the gap answering.
    lab.nsport_ok(&["add", "--netns", &ns1, "20000-20099:20000-20099"]);
    let rows = listing(&lab);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (&rows[0]["host_port"], &rows[0]["host_port_end"]),
        (&20000.into(), &20099.into())
    );
    assert_eq!(client(lab.tcp("out", HOST_OUT, INSIDE)), some(OUT));
    lab.nsport_ok(&["rm", "20050"]);
    // rm of a port no longer published is refused and changes nothing.
    let output = lab.nsport(&["rm", "20050"]);
    assert_eq!(output.status.code(), Some(2));
    // The end of a part leaves a single port in the exact map.
    lab.nsport_ok(&["rm", "20000-20048"]);
    let rows = listing(&lab);
    assert_eq!(rows[0]["host_port"], 20049);
    assert!(rows[0].get("host_port_end").is_none(), "{rows:?}");
    assert_eq!(client(lab.tcp("out", HOST_OUT, 20049)), some(OUT));
    assert_eq!(client(lab.tcp("out", HOST_OUT, START)), None);
    // A range spec over a gap is refused, naming the first port not published.
    let output = lab.nsport(&["rm", "20049-20060"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("20050"), "{stderr}");
    // The rest goes whole.
    lab.nsport_ok(&["rm", "20049", "20051-20099"]);
    assert_eq!(lab.nsport_ok(&["ls", "--json"]).trim(), "[]");
    assert_eq!(client(lab.tcp("out", HOST_OUT, END)), None);
}

#[test]
fn ranges_survive_export_and_apply() {
    let lab = Lab::new(BrNetfilter::Off);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "20000-20099:20000-20099",
        "8000-8002:9000-9002",
    ]);
    lab.nsport_ok(&["rm", "20050"]);
    let before = listing(&lab);
    let exported = lab.nsport_ok(&["export"]);
    lab.nsport_ok(&["flush"]);
    assert_eq!(lab.nsport_ok(&["ls", "--json"]).trim(), "[]");
    let path = lab.state_dir().join("exported.json");
    std::fs::write(&path, &exported).unwrap();
    lab.nsport_ok(&["apply", path.to_str().unwrap()]);
    let strip = |rows: Vec<Value>| -> Vec<Value> {
        rows.into_iter()
            .map(|mut row| {
                row["packets"] = 0.into();
                row["bytes"] = 0.into();
                row
            })
            .collect()
    };
    assert_eq!(strip(listing(&lab)), strip(before));
    // Applying the same file again changes nothing.
    let table = lab.ruleset();
    lab.nsport_ok(&["apply", path.to_str().unwrap()]);
    assert_eq!(lab.ruleset(), table);
}

/// Eight writers at once, publishing ranges that overlap their neighbours' and single
/// ports inside them: whatever wins, the table never holds two mappings of one port, and
/// every writer that lost was told so.
#[test]
fn concurrent_overlapping_publishes_never_leave_a_port_published_twice() {
    let lab = Lab::new(BrNetfilter::Off);
    let (ns1, ns2) = (lab.ns("ns1"), lab.ns("ns2"));
    let mut children = Vec::new();
    for i in 0..8u16 {
        let netns = if i % 2 == 0 { &ns1 } else { &ns2 };
        let spec = match i % 4 {
            // Ranges 20000-20019, 20010-20029, …: each overlaps the next.
            0 | 1 => {
                let start = 20000 + i * 10;
                format!("{start}-{}:{start}-{}", start + 19, start + 19)
            }
            // Single ports inside those ranges.
            _ => format!("{}:80", 20005 + i * 10),
        };
        children.push((
            spec.clone(),
            lab.spawn_nsport(&["add", "--netns", netns, &spec]),
        ));
    }
    let mut won = 0;
    for (spec, child) in children {
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        match output.status.code() {
            Some(0) => won += 1,
            Some(1) => assert!(stderr.contains("already published"), "{spec}: {stderr}"),
            other => panic!("{spec}: {other:?} {stderr}"),
        }
    }
    assert!(won >= 1);
    let rows = listing(&lab);
    assert_eq!(rows.len(), won, "{rows:?}");
    let mut ports: Vec<(u64, u64)> = rows
        .iter()
        .map(|row| {
            let start = row["host_port"].as_u64().unwrap();
            (start, row["host_port_end"].as_u64().unwrap_or(start))
        })
        .collect();
    ports.sort();
    for pair in ports.windows(2) {
        assert!(pair[0].1 < pair[1].0, "{ports:?} overlap");
    }
}

/// `nft list` decodes every range, and `nft -f` of what nsport exports makes the very rules
/// nsport writes: nothing for nsport to repair afterwards, and the ranges still answer.
#[test]
fn nft_writes_back_ranges_exactly_as_nsport_writes_them() {
    let lab = Lab::dual_stack(BrNetfilter::Off);
    let _servers = servers(&lab);
    lab.nsport_ok(&[
        "add",
        "--netns",
        &lab.ns("ns1"),
        "20000-20099:20000-20099",
        "[2001:db8::1]:20000-20099:20000-20099/udp",
        "127.0.0.1:20000-20099:20000-20099/udp",
    ]);
    let table = lab.nft("host", "list table inet nsport");
    assert!(
        !table.contains("unknown") && !table.contains("invalid"),
        "{table}"
    );
    assert!(table.contains("20000-20099 . tcp counter"), "{table}");
    let script = lab.nsport_ok(&["export", "--nft"]);
    let path = lab.state_dir().join("export.nft");
    std::fs::write(&path, script).unwrap();
    lab.nft("host", &format!("-f {}", path.display()));
    assert_eq!(
        without_counter_values(&lab.nft("host", "list table inet nsport")),
        without_counter_values(&table)
    );
    let output = lab.nsport(&["ls"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success());
    assert!(!stderr.contains("changed by something else"), "{stderr}");
    assert_eq!(client(lab.tcp("out", HOST_OUT, INSIDE)), some(OUT));
    assert!(lab.udp("host", LOCALHOST, END).is_some());
    assert!(lab.udp("out", v6::HOST_OUT, START).is_some());
}

/// Whether a running UDP flow (one socket, one conntrack entry) gets an answer from
/// `to`: a few datagrams, each with the socket's read timeout, after draining what was in
/// flight.
/// A table of layout 3, whose range maps lead their keys with the protocol (kept in
/// `nft/v3/`, written by the golden scenario's commands), is read in its own order and
/// rebuilt with every range: the same rows before and after, the very table nsport writes
/// for the same commands, and traffic that goes by the protocol and the ports of each.
#[test]
fn a_layout_3_table_keeps_its_ranges_through_migration() {
    let lab = Lab::dual_stack(BrNetfilter::On);
    let _servers = servers(&lab);
    assert!(
        lab.load_fixture("nft/v3/ranges.nft")
            .contains("nsport-layout=3")
    );
    lab.write_sysctl("host", "net/ipv4/ip_forward", "1");
    lab.write_sysctl("host", "net/ipv6/conf/all/forwarding", "1");
    // Two single ports side by side, as layout 3 kept `add 7001 7002`: they stay two.
    lab.nft(
        "host",
        r#"add element inet nsport any4 { tcp . 7001 comment "via=br0" : 172.18.0.2 . 7001, tcp . 7002 comment "via=br0" : 172.18.0.2 . 7002 }"#,
    );
    let before = lab.rows_but_counters();
    let ranges = before
        .iter()
        .filter(|row| row.contains("\"host_port_end\":"))
        .count();
    // 20000-20049 and 20051-20099 in both families, 127.0.0.1's and 2001:db8::1's.
    assert_eq!(ranges, 6, "layout 3's ranges were not all read: {before:?}");

    lab.nsport_ok(&["migrate"]);
    assert_eq!(lab.rows_but_counters(), before);
    // Without the two, the table is the one nsport writes for the scenario's commands.
    lab.nsport_ok(&["rm", "7001", "7002"]);
    let table = lab.nft("host", "list table inet nsport");
    assert!(table.contains("nsport-layout=4"), "{table}");
    let golden = read_fixture("nft/ranges.nft");
    let now = without_counter_values(&sort_elements(&hide_inodes(&lab.normalize(&table))));
    assert_eq!(now, without_counter_values(&golden));
    // TCP at both ends of what is left of 20000-20099, in both families; not the port the
    // scenario removed, and not UDP, which ns1 serves too but no range publishes.
    for (addr, port) in [
        (IpAddr::from(HOST_OUT), START),
        (IpAddr::from(v6::HOST_OUT), END),
    ] {
        assert!(reaches(&lab, "out", addr, port, false), "{addr} {port}");
        assert!(!reaches(&lab, "out", addr, port, true), "{addr} {port}/udp");
    }
    assert!(!reaches(&lab, "out", HOST_OUT.into(), INSIDE, false));
}

fn flow_answers(flow: &std::net::UdpSocket, to: (std::net::Ipv4Addr, u16)) -> bool {
    let mut buf = [0; 64];
    while flow.recv_from(&mut buf).is_ok() {}
    (0..5).any(|_| {
        flow.send_to(b"?", to).unwrap();
        flow.recv_from(&mut buf).is_ok()
    })
}

/// `rm` forgets the conntrack entries of the ports it unpublishes, inside a range too: a
/// running UDP flow to a removed port stops reaching the namespace, while one to a port
/// the range keeps goes on.
#[test]
fn rm_forgets_the_flows_of_the_ports_of_a_range_it_removes() {
    let lab = Lab::new(BrNetfilter::Off);
    let _servers = servers(&lab);
    // Another mapping keeps forwarding on once the range is gone.
    lab.nsport_ok(&[
        "add",
        "--netns",
        &lab.ns("ns1"),
        "20000-20099:20000-20099/udp",
        "19999/udp",
    ]);
    let (removed, kept) = (lab.udp_socket("out"), lab.udp_socket("out"));
    assert!(flow_answers(&removed, (HOST_OUT, INSIDE)));
    assert!(flow_answers(&kept, (HOST_OUT, END)));
    lab.nsport_ok(&["rm", "20050/udp"]);
    assert!(
        !flow_answers(&removed, (HOST_OUT, INSIDE)),
        "the removed port's flow"
    );
    assert!(flow_answers(&kept, (HOST_OUT, END)), "the kept port's flow");
    // The rest of the range, whole.
    lab.nsport_ok(&["rm", "20000-20049/udp", "20051-20099/udp"]);
    assert!(
        !flow_answers(&kept, (HOST_OUT, END)),
        "a flow of a range removed whole"
    );
}

//! SCTP publishing with real SCTP packets. This kernel tracks and NATs SCTP but has no SCTP
//! sockets (CONFIG_IP_SCTP is off), so the tests speak SCTP over raw IP sockets: a client
//! sends an INIT chunk, a raw socket in the target namespace reads what arrives there (it
//! also keeps that kernel from answering "protocol unreachable"), answers with an INIT-ACK,
//! and the client reads what comes back. Conntrack checks the CRC32c of packets that
//! arrive without a checksum offload, so every packet carries a correct one.

mod lab;
mod sctp_lab;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use lab::*;
use sctp_lab::*;
use serde_json::{Value, json};

/// conntrack's `SCTP_CONNTRACK_ESTABLISHED`.
const SCTP_ESTABLISHED: u8 = 4;
const PUBLISHED: u16 = 3868;
const TARGET_PORT: u16 = 9899;

/// Asserts that an exchange through `addr`:`PUBLISHED` reaches ns1's `to` address on
/// TARGET_PORT from `from`, and that the reply comes back as if from `addr`:`PUBLISHED`.
fn assert_translated(lab: &Lab, client: &str, addr: IpAddr, from: Option<IpAddr>, to: IpAddr) {
    // Apart from the fixed client ports (40000-49999) the other tests use.
    let sport = 50000 + (fresh_tag() % 10000) as u16;
    let seen = exchange(lab, client, sport, addr, PUBLISHED, "ns1");
    let init = seen
        .at_target
        .unwrap_or_else(|| panic!("{client} -> {addr}: the INIT never reached ns1"));
    assert_eq!(
        (init.dst, init.dport),
        (to, TARGET_PORT),
        "{client} -> {addr}"
    );
    if let Some(from) = from {
        assert_eq!(init.src, from, "{client} -> {addr}: the source ns1 saw");
    }
    assert!(
        init.checksum_ok,
        "{client} -> {addr}: NAT left a bad CRC32c"
    );
    let reply = seen
        .reply
        .unwrap_or_else(|| panic!("{client} -> {addr}: the INIT-ACK never came back"));
    assert_eq!(
        (reply.src, reply.sport, reply.dport, reply.vtag),
        (addr, PUBLISHED, sport, init.initiate_tag),
        "{client} -> {addr}: the reply the client read"
    );
    assert!(
        reply.checksum_ok,
        "{client} -> {addr}: NAT left a bad CRC32c"
    );
}

/// Whether an INIT from `client` to `addr`:`port` reaches ns1 at all.
fn reaches_ns1(lab: &Lab, client: &str, sport: u16, addr: impl Into<IpAddr>, port: u16) -> bool {
    exchange(lab, client, sport, addr.into(), port, "ns1")
        .at_target
        .is_some()
}

/// The SCTP flows the host namespace's conntrack holds, read with nsport's own ctnetlink
/// code (a matcher that deletes nothing).
fn sctp_flows(lab: &Lab) -> Vec<nsport::netlink::conntrack::Flow> {
    let flows = Mutex::new(Vec::new());
    lab.run_in("host", || {
        nsport::netlink::conntrack::delete_flows(|flow| {
            if flow.proto == 132 {
                flows.lock().unwrap().push(*flow);
            }
            false
        })
        .expect("read conntrack")
    });
    flows.into_inner().unwrap()
}

fn listing(lab: &Lab) -> Vec<Value> {
    let text = lab.nsport_ok(&["ls", "--json"]);
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn v4(addr: Ipv4Addr) -> IpAddr {
    IpAddr::V4(addr)
}

#[test]
fn crc32c_matches_the_standard_check_value() {
    // The check value of CRC-32C, and RFC 3720's 32 zero bytes.
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(&[0; 32]), 0x8A91_36AA);
}

#[test]
fn sctp_is_translated_from_outside_the_host_and_neighbours() {
    let lab = Lab::new(BrNetfilter::On);
    // Control: before anything is published, an INIT to the host stays on the host.
    assert!(!reaches_ns1(&lab, "out", 40001, HOST_OUT, PUBLISHED));
    let spec = format!("{PUBLISHED}:{TARGET_PORT}/sctp");
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), &spec, "3870/tcp"]);
    let ns1 = v4(NS1);

    // Outside: DNAT alone, the client's own address arrives.
    assert_translated(&lab, "out", v4(HOST_OUT), Some(v4(OUT)), ns1);
    assert_translated(&lab, "out", v4(HOST_OUT2), Some(v4(OUT)), ns1);
    // The host itself (the output path), through its addresses and 127.0.0.1, which is
    // masqueraded to the bridge's address.
    assert_translated(&lab, "host", v4(HOST_OUT), None, ns1);
    assert_translated(&lab, "host", v4(LOCALHOST), Some(v4(HOST_BR)), ns1);
    // A neighbour on the bridge, one behind another interface, and ns1 itself (hairpin).
    assert_translated(&lab, "ns2", v4(HOST_BR), None, ns1);
    assert_translated(&lab, "ns3", v4(HOST_V3), None, ns1);
    assert_translated(&lab, "ns1", v4(HOST_OUT), Some(v4(HOST_BR)), ns1);

    // An SCTP port nobody published is not translated, nor one published for TCP only.
    assert!(!reaches_ns1(&lab, "out", 40002, HOST_OUT, PUBLISHED + 1));
    assert!(!reaches_ns1(&lab, "out", 40003, HOST_OUT, 3870));
    // ns1's own port is not reachable directly either: only the published host port is.
    assert!(!reaches_ns1(&lab, "out", 40004, NS1, TARGET_PORT));
}

#[test]
fn sctp_is_listed_counted_exported_and_applied() {
    let lab = Lab::new(BrNetfilter::Off);
    let spec = format!("{PUBLISHED}:{TARGET_PORT}/sctp");
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), &spec]);
    let mapping = listing(&lab)
        .into_iter()
        .find(|m| m["proto"] == "sctp")
        .expect("an sctp mapping in ls --json");
    assert_eq!(mapping["host_port"], PUBLISHED);
    assert_eq!(mapping["to_port"], TARGET_PORT);
    assert_eq!(mapping["to_addr"], NS1.to_string());
    assert_eq!(mapping["packets"], 0);
    let table = lab.nsport_ok(&["ls"]);
    let row = table.lines().find(|l| l.starts_with("sctp")).expect(&table);
    assert!(row.contains(&format!("*:{PUBLISHED}")), "{table}");
    // The real nft decodes the element as SCTP.
    let nft = lab.nft("host", "list table inet nsport");
    assert!(nft.contains(&format!("sctp . {PUBLISHED}")), "{nft}");

    assert_translated(&lab, "out", v4(HOST_OUT), Some(v4(OUT)), v4(NS1));
    let mapping = listing(&lab).remove(0);
    // The INIT and the INIT-ACK at least, and their bytes.
    assert!(mapping["packets"].as_u64().unwrap() >= 2, "{mapping}");
    assert!(mapping["bytes"].as_u64().unwrap() >= 2 * 48, "{mapping}");
    let metrics = lab.nsport_ok(&["metrics"]);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("nsport_mapping_packets_total{proto=\"sctp\"")
                && l.contains(&format!("host_port=\"{PUBLISHED}\""))
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );

    // export / flush / apply brings the SCTP mapping back, and it works again.
    let exported = lab.nsport_ok(&["export"]);
    assert!(exported.contains("/sctp"), "{exported}");
    let file = lab.state_dir().with_extension("export.json");
    std::fs::write(&file, &exported).unwrap();
    lab.nsport_ok(&["flush"]);
    assert!(!reaches_ns1(&lab, "out", 40005, HOST_OUT, PUBLISHED));
    lab.nsport_ok(&["apply", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(listing(&lab)[0]["proto"], "sctp");
    assert_translated(&lab, "out", v4(HOST_OUT), Some(v4(OUT)), v4(NS1));
}

#[test]
fn rm_stops_sctp_and_forgets_its_flows() {
    let lab = Lab::new(BrNetfilter::On);
    let spec = format!("{PUBLISHED}:{TARGET_PORT}/sctp");
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), &spec]);
    let running = Association::establish(&lab, "out", 41000, v4(HOST_OUT), PUBLISHED, "ns1");
    assert!(running.data_arrives() && running.reply_arrives());
    let ours = |flows: Vec<nsport::netlink::conntrack::Flow>| {
        flows
            .into_iter()
            .filter(|f| f.dport == PUBLISHED && f.dst == v4(HOST_OUT))
            .collect::<Vec<_>>()
    };
    let before = ours(sctp_flows(&lab));
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].reply_src, Some(v4(NS1)));
    assert_eq!(before[0].sctp_state, Some(SCTP_ESTABLISHED), "{before:?}");

    lab.nsport_ok(&["rm", &format!("{PUBLISHED}/sctp")]);
    assert_eq!(ours(sctp_flows(&lab)), [], "rm left the DNATed SCTP flow");
    // The running association no longer reaches ns1, nor does a new one.
    assert!(!running.data_arrives());
    assert!(!reaches_ns1(&lab, "out", 41001, HOST_OUT, PUBLISHED));
    assert!(listing(&lab).is_empty());
}

#[test]
fn publishing_redirects_unanswered_inits_and_leaves_the_hosts_associations() {
    let lab = Lab::new(BrNetfilter::Off);
    // Another mapping first, so that the host namespace tracks connections at all.
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns2"), "3870/tcp"]);
    // A client retries its INIT while the port is not yet published: nothing on the host
    // answers, so conntrack keeps the association waiting (COOKIE_WAIT) on the host.
    let sport = 42000;
    assert!(!reaches_ns1(&lab, "out", sport, HOST_OUT, PUBLISHED));
    let waiting = sctp_flows(&lab);
    assert!(
        waiting
            .iter()
            .any(|f| f.dport == PUBLISHED && f.reply_src == Some(v4(HOST_OUT))),
        "{waiting:?}"
    );
    // Meanwhile an association the host itself answered (a raw socket plays the host's
    // SCTP stack) runs on the same port from another client port.
    let hosts = Association::establish(&lab, "out", 42001, v4(HOST_OUT), PUBLISHED, "host");

    let spec = format!("{PUBLISHED}:{TARGET_PORT}/sctp");
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), &spec]);
    // The retried INIT, from the same port, now goes to the target...
    assert!(reaches_ns1(&lab, "out", sport, HOST_OUT, PUBLISHED));
    // ...and the host's own association goes on with the host, both ways.
    assert!(
        hosts.heartbeat_arrives(),
        "the host's association was redirected"
    );
    assert!(
        hosts.data_arrives(),
        "the host's association was redirected"
    );
    assert!(hosts.reply_arrives());
}

#[test]
fn sctp_over_ipv6_is_translated() {
    let lab = Lab::dual_stack(BrNetfilter::Off);
    let ns1 = IpAddr::V6(v6::NS1);
    let spec = format!("[{}]:{PUBLISHED}:{TARGET_PORT}/sctp", v6::HOST_OUT);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), &spec]);
    assert_translated(
        &lab,
        "out",
        IpAddr::V6(v6::HOST_OUT),
        Some(IpAddr::V6(v6::OUT)),
        ns1,
    );
    // Only the address published: the host's other address keeps the port.
    let other = IpAddr::V6(v6::HOST_OUT2);
    assert!(
        exchange(&lab, "out", 43000, other, PUBLISHED, "ns1")
            .at_target
            .is_none()
    );
}

#[test]
fn cni_add_and_del_publish_sctp() {
    let mut lab = Lab::new(BrNetfilter::On);
    lab.add_namespace("ctr");
    let result = lab.cni_attach("c1", &lab.ns("ctr"));
    let ip: Ipv4Addr = result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let config = json!({
        "cniVersion": "1.0.0",
        "name": "labnet",
        "type": "nsport",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [
            {"hostPort": PUBLISHED, "containerPort": TARGET_PORT, "protocol": "sctp"},
        ]},
        "prevResult": result,
    });
    let nsport = env!("CARGO_BIN_EXE_nsport");
    let output = lab.cni(nsport, "ADD", "c1", &lab.ns("ctr"), &config);
    assert!(output.status.success(), "{output:?}");
    let mapping = listing(&lab).remove(0);
    assert_eq!(
        (&mapping["proto"], &mapping["container"]),
        (&json!("sctp"), &json!("c1"))
    );
    let seen = exchange(&lab, "out", 44000, v4(HOST_OUT), PUBLISHED, "ctr");
    let init = seen.at_target.expect("the INIT reached the container");
    assert_eq!(
        (init.src, init.dst, init.dport),
        (v4(OUT), v4(ip), TARGET_PORT)
    );
    let reply = seen.reply.expect("the INIT-ACK came back");
    assert_eq!((reply.src, reply.sport), (v4(HOST_OUT), PUBLISHED));
    assert!(
        lab.cni(nsport, "CHECK", "c1", &lab.ns("ctr"), &config)
            .status
            .success()
    );

    let output = lab.cni(nsport, "DEL", "c1", &lab.ns("ctr"), &config);
    assert!(output.status.success(), "{output:?}");
    assert!(listing(&lab).is_empty());
    let seen = exchange(&lab, "out", 44001, v4(HOST_OUT), PUBLISHED, "ctr");
    assert!(seen.at_target.is_none(), "{seen:?}");
}

/// Every path through the table keys on the protocol too, so an SCTP port and a TCP port
/// of the same number are separate mappings.
#[test]
fn sctp_and_tcp_share_a_port_number_as_separate_mappings() {
    let lab = Lab::new(BrNetfilter::Off);
    let _server = lab.serve_tcp("ns2", Ipv4Addr::UNSPECIFIED, TARGET_PORT);
    let spec = format!("{PUBLISHED}:{TARGET_PORT}");
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns2"), &format!("{spec}/tcp")]);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), &format!("{spec}/sctp")]);
    assert_eq!(lab.tcp("out", HOST_OUT, PUBLISHED), some(OUT));
    assert_translated(&lab, "out", v4(HOST_OUT), Some(v4(OUT)), v4(NS1));
    lab.nsport_ok(&["rm", &format!("{PUBLISHED}/sctp")]);
    assert_eq!(lab.tcp("out", HOST_OUT, PUBLISHED), some(OUT));
    assert!(!reaches_ns1(&lab, "out", 45000, HOST_OUT, PUBLISHED));
}

#[test]
fn sctp_host_ports_are_checked_and_chosen_on_a_kernel_without_sctp_sockets() {
    let lab = Lab::new(BrNetfilter::Off);
    // No SCTP in this kernel: sock_diag has no SCTP handler, which means no SCTP socket.
    let held = lab.run_in("host", || {
        nsport::netlink::sock_diag::bound_sockets(nsport::Proto::Sctp)
    });
    assert_eq!(held.expect("no SCTP is no socket, not an error"), []);
    // A host port chosen by nsport, as for TCP and UDP.
    let added = lab.nsport_ok(&[
        "add",
        "--netns",
        &lab.ns("ns1"),
        &format!("::{TARGET_PORT}/sctp"),
    ]);
    let chosen: nsport::PublishSpec = added.trim().parse().expect(&added);
    assert_eq!(
        (chosen.proto, chosen.ns_ports.start),
        (nsport::Proto::Sctp, TARGET_PORT)
    );
    let port = chosen.host_ports.start;
    assert!(reaches_ns1(&lab, "out", 46000, HOST_OUT, port));
}

/// Eight writers at once: each publishes an SCTP and a TCP port of the same number, and
/// eight more race for one SCTP host port from two namespaces. Every distinct mapping
/// lands, and of the race one target holds the port while the others are refused naming it.
#[test]
fn concurrent_sctp_publishes_land_whole_or_are_refused_naming_the_holder() {
    let lab = Lab::new(BrNetfilter::Off);
    let pairs: Vec<_> = (0..8u16)
        .map(|i| {
            let port = 5000 + i;
            let args = [
                "add".to_string(),
                "--netns".to_string(),
                lab.ns("ns1"),
                format!("{port}:{TARGET_PORT}/sctp"),
                format!("{port}/tcp"),
            ];
            lab.spawn_nsport(&args.each_ref().map(String::as_str))
        })
        .collect();
    let race: Vec<_> = (0..8)
        .map(|i| {
            let role = if i % 2 == 0 { "ns1" } else { "ns2" };
            let spec = format!("5100:{TARGET_PORT}/sctp");
            (
                role,
                lab.spawn_nsport(&["add", "--netns", &lab.ns(role), &spec]),
            )
        })
        .collect();
    for child in pairs {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{output:?}");
    }
    let race: Vec<(&str, std::process::Output)> = race
        .into_iter()
        .map(|(role, child)| (role, child.wait_with_output().unwrap()))
        .collect();

    let listing = listing(&lab);
    let sctp = |port: u16| {
        listing
            .iter()
            .filter(|m| m["proto"] == "sctp" && m["host_port"] == port)
            .count()
    };
    assert_eq!(listing.len(), 17, "{listing:?}");
    assert!((5000..5008).all(|port| sctp(port) == 1));
    let holder = listing.iter().find(|m| m["host_port"] == 5100).unwrap()["to_addr"]
        .as_str()
        .unwrap()
        .to_string();
    let winner = if holder == NS1.to_string() {
        "ns1"
    } else {
        "ns2"
    };
    for (role, output) in &race {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if *role == winner {
            assert!(output.status.success(), "{role}: {stderr}");
        } else {
            assert_eq!(output.status.code(), Some(1), "{role}: {stderr}");
            assert!(
                stderr.contains("5100/sctp") && stderr.contains(&holder),
                "{role}: {stderr}"
            );
        }
    }
    for port in [5000, 5007] {
        let init = exchange(&lab, "out", 47000 + port, v4(HOST_OUT), port, "ns1")
            .at_target
            .unwrap_or_else(|| panic!("{port}/sctp does not reach ns1"));
        assert_eq!((init.dst, init.dport), (v4(NS1), TARGET_PORT));
    }
}

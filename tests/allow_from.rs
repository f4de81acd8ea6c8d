//! Source allow-lists (`add --allow-from`) with real traffic: a source on a port's list
//! reaches the target, any other source meets the host as if the port were not published
//! (a reset, not a timeout), the host's own non-loopback addresses and hairpin go by the
//! same list, 127.0.0.1 always passes; re-adding switches the list, rm removes it, and
//! export/apply keeps it.

mod lab;

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use lab::*;

/// What a TCP client meets: the answer of the server (the source it saw), a reset, or
/// nothing at all (dropped).
#[derive(Debug, PartialEq, Eq)]
enum Met {
    Answer(String),
    Refused,
    Nothing,
}

/// Connects from `role` to `addr:port`.
fn connect(lab: &Lab, role: &str, addr: impl Into<IpAddr>, port: u16) -> Met {
    let target = SocketAddr::from((addr.into(), port));
    lab.run_in(role, || {
        match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Ok(mut stream) => {
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let mut answer = String::new();
                match stream.read_to_string(&mut answer) {
                    Ok(_) => Met::Answer(answer),
                    Err(error) if error.kind() == ErrorKind::ConnectionReset => Met::Refused,
                    Err(_) => Met::Nothing,
                }
            }
            Err(error) if error.kind() == ErrorKind::ConnectionRefused => Met::Refused,
            Err(_) => Met::Nothing,
        }
    })
}

/// Makes `out` send from another of its addresses (its on-link route's source).
fn out_sends_from(lab: &Lab, source: &str) {
    lab.ip(
        "out",
        &format!("route replace 192.0.2.0/24 dev eth0 src {source}"),
    );
}

fn answer(addr: impl Into<IpAddr>) -> Met {
    Met::Answer(addr.into().to_string())
}

/// The elements of one set of the table, as nft lists them.
fn elements(lab: &Lab, set: &str) -> String {
    let listing = lab.nft("host", &format!("list set inet nsport {set}"));
    listing
        .split_once("elements = {")
        .map(|(_, rest)| rest.split('}').next().unwrap_or_default().to_string())
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn listing(lab: &Lab) -> Vec<serde_json::Value> {
    serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap()
}

#[test]
fn only_listed_sources_reach_the_port_and_others_get_a_reset() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 80);
    // A second outside source on the same namespace as the first.
    lab.ip("out", "addr add 192.0.2.3/24 dev eth0");
    let other_out: IpAddr = Ipv4Addr::new(192, 0, 2, 3).into();
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "8080:80",
        "--allow-from",
        "192.0.2.2",
    ]);

    // Outside: the listed source is served, keeping its address; another one, from the
    // same namespace or from another network, is reset as by an unpublished port.
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), answer(OUT));
    out_sends_from(&lab, "192.0.2.3");
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), Met::Refused);
    out_sends_from(&lab, "192.0.2.2");
    assert_eq!(connect(&lab, "ns3", HOST_V3, 8080), Met::Refused);
    // The host from one of its own addresses is a source like any other …
    assert_eq!(connect(&lab, "host", HOST_OUT, 8080), Met::Refused);
    // … but through 127.0.0.1 it always passes.
    assert!(matches!(
        connect(&lab, "host", LOCALHOST, 8080),
        Met::Answer(_)
    ));
    // Hairpin and the neighbour go by the list too.
    assert_eq!(connect(&lab, "ns1", HOST_OUT, 8080), Met::Refused);
    assert_eq!(connect(&lab, "ns2", HOST_BR, 8080), Met::Refused);

    // Listed and shown.
    let rows = listing(&lab);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["allow_from"], serde_json::json!(["192.0.2.2"]));
    let table = lab.nsport_ok(&["ls"]);
    assert!(
        table.contains("FROM") && table.contains("192.0.2.2"),
        "{table}"
    );

    // Re-adding with another list switches it: the old source is out, the new ones in,
    // the host's own address and the namespace itself among them.
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "8080:80",
        "--allow-from",
        "10.77.0.2",
        "--allow-from",
        "172.18.0.0/24",
        "--allow-from",
        "192.0.2.1",
    ]);
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), Met::Refused);
    assert!(matches!(
        connect(&lab, "ns3", HOST_V3, 8080),
        Met::Answer(_)
    ));
    assert!(matches!(
        connect(&lab, "host", HOST_OUT, 8080),
        Met::Answer(_)
    ));
    assert!(matches!(
        connect(&lab, "ns1", HOST_OUT, 8080),
        Met::Answer(_)
    ));
    assert!(matches!(
        connect(&lab, "ns2", HOST_BR, 8080),
        Met::Answer(_)
    ));
    assert_eq!(
        elements(&lab, "allow4"),
        "10.77.0.2 . 8080 . tcp, 172.18.0.0/24 . 8080 . tcp, 192.0.2.1 . 8080 . tcp"
            .split(", ")
            .collect::<Vec<_>>()
            .join(", ")
    );

    // rm takes the list with the last mapping of the port; published again without a
    // list, the port is open to every source.
    lab.nsport_ok(&["rm", "8080"]);
    for set in ["limited", "allow4", "allow6"] {
        assert_eq!(elements(&lab, set), "", "{set}");
    }
    lab.nsport_ok(&["add", "--netns", &ns1, "8080:80"]);
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), answer(OUT));
    out_sends_from(&lab, "192.0.2.3");
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), answer(other_out));
}

#[test]
fn ipv6_sources_go_by_the_ipv6_prefixes_of_the_list() {
    let lab = Lab::dual_stack(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    let _server = lab.serve_tcp("ns1", ANY, 80);
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "8080:80",
        "--allow-from",
        "2001:db8::2/128",
    ]);
    assert_eq!(connect(&lab, "out", v6::HOST_OUT, 8080), answer(v6::OUT));
    assert_eq!(connect(&lab, "ns3", v6::HOST_V3, 8080), Met::Refused);
    assert_eq!(connect(&lab, "host", v6::HOST_OUT, 8080), Met::Refused);
    assert_eq!(connect(&lab, "ns1", v6::HOST_OUT, 8080), Met::Refused);
    // The list has no IPv4 prefix: no IPv4 source may use the port.
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), Met::Refused);
    assert!(matches!(
        connect(&lab, "host", LOCALHOST, 8080),
        Met::Answer(_)
    ));

    // One list for both families of the port: an IPv4 prefix opens IPv4 to that source.
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "8080:80",
        "--allow-from",
        "2001:db8:3::/64",
        "--allow-from",
        "192.0.2.2",
        "--allow-from",
        "2001:db8:1::2",
    ]);
    assert_eq!(connect(&lab, "out", v6::HOST_OUT, 8080), Met::Refused);
    assert_eq!(connect(&lab, "ns3", v6::HOST_V3, 8080), answer(v6::NS3));
    assert_eq!(
        connect(&lab, "out", HOST_OUT, 8080),
        Met::Answer(format!("::ffff:{OUT}"))
    );
    // Hairpin keeps the namespace's own address, masqueraded to the host's.
    assert!(matches!(
        connect(&lab, "ns1", v6::HOST_OUT, 8080),
        Met::Answer(_)
    ));
    let rows = listing(&lab);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert_eq!(
            row["allow_from"],
            serde_json::json!(["192.0.2.2", "2001:db8:1::2", "2001:db8:3::/64"]),
            "{row}"
        );
    }
}

#[test]
fn udp_from_another_source_gets_port_unreachable() {
    let lab = Lab::new(BrNetfilter::On);
    let _server = lab.serve_udp("ns1", Ipv4Addr::UNSPECIFIED, 53);
    lab.nsport_ok(&[
        "add",
        "--netns",
        &lab.ns("ns1"),
        "5353:53/udp",
        "--allow-from",
        "192.0.2.2",
    ]);
    assert_eq!(lab.udp("out", HOST_OUT, 5353), some(OUT));
    // From ns3 the datagram meets the host, which has no socket there: an ICMP port
    // unreachable, which a connected socket reports as refused.
    let refused = lab.run_in("ns3", || {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        socket.connect((HOST_V3, 5353)).unwrap();
        socket.send(b"?").unwrap();
        socket.recv(&mut [0; 64]).map_err(|e| e.kind())
    });
    assert_eq!(refused, Err(ErrorKind::ConnectionRefused));
}

#[test]
fn a_port_has_one_list_and_the_holder_is_named() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "192.0.2.1:8080:80",
        "--allow-from",
        "10.77.0.0/30",
    ]);
    let before = lab.ruleset();
    // Another mapping of the port without the list, or with another one, is refused.
    for extra in [&[][..], &["--allow-from", "192.0.2.0/24"][..]] {
        let mut args = vec!["add", "--netns", &ns1, "198.51.100.1:8080:80"];
        args.extend(extra);
        let output = lab.nsport(&args);
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let error = String::from_utf8_lossy(&output.stderr);
        assert_eq!(error.trim().lines().count(), 1, "{error}");
        assert!(
            error.contains("198.51.100.1:8080/tcp")
                && error.contains("192.0.2.1:8080/tcp to 172.18.0.2:80")
                && error.contains("only 10.77.0.0/30"),
            "{error}"
        );
        assert_eq!(lab.ruleset(), before);
    }
    // With the same list it joins the port; another protocol's port is another port.
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "198.51.100.1:8080:80",
        "--allow-from",
        "10.77.0.0/30",
    ]);
    lab.nsport_ok(&["add", "--netns", &ns1, "8080:80/udp"]);
    // Removing one mapping keeps the list for the other; the last one takes it along.
    lab.nsport_ok(&["rm", "192.0.2.1:8080"]);
    assert_eq!(elements(&lab, "allow4"), "10.77.0.0/30 . 8080 . tcp");
    lab.nsport_ok(&["rm", "198.51.100.1:8080"]);
    assert_eq!(elements(&lab, "allow4"), "");
    assert_eq!(elements(&lab, "limited"), "");
}

#[test]
fn bad_sources_are_refused_naming_the_value_and_change_nothing() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "3000:3000"]);
    let before = lab.ruleset();
    for (bad, says) in [
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("10.0.0.0/33", "at most 32"),
        ("2001:db8::/200", "at most 128"),
        ("example.org", "not an IPv4 or IPv6"),
        ("::ffff:192.0.2.2", "IPv4-mapped"),
    ] {
        let output = lab.nsport(&["add", "--netns", &ns1, "8080:80", "--allow-from", bad]);
        assert_eq!(output.status.code(), Some(2), "{bad}: {output:?}");
        let error = String::from_utf8_lossy(&output.stderr);
        assert_eq!(error.trim().lines().count(), 1, "{error}");
        assert!(
            error.contains(bad) && error.contains(says),
            "{bad}: {error}"
        );
        // The same through apply.
        let file = TempFile(lab.state_dir().with_extension("bad.json"));
        let entry = serde_json::json!({"version": 1, "mappings": [
            {"netns": ns1, "publish": "8080:80", "allow_from": [bad]}]});
        std::fs::write(&file.0, entry.to_string()).unwrap();
        let output = lab.nsport(&["apply", file.0.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{bad}: {output:?}");
        let error = String::from_utf8_lossy(&output.stderr);
        assert_eq!(error.trim().lines().count(), 1, "{error}");
        assert!(
            error.contains(bad) && error.contains(says),
            "{bad}: {error}"
        );
        assert_eq!(lab.ruleset(), before, "{bad}");
    }
}

#[test]
fn export_and_apply_keep_the_lists_and_counters_survive_a_switch() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 80);
    lab.nsport_ok(&["add", "--netns", &ns1, "3000:80"]);
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "8080:80",
        "--allow-from",
        "192.0.2.0/24",
    ]);
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), answer(OUT));
    let packets = |lab: &Lab| -> u64 {
        listing(lab)
            .iter()
            .find(|row| row["host_port"] == 8080)
            .and_then(|row| row["packets"].as_u64())
            .unwrap()
    };
    let counted = packets(&lab);
    assert!(counted > 0);
    // A new list changes the list's elements only: the mapping keeps its counter.
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "8080:80",
        "--allow-from",
        "192.0.2.2",
    ]);
    assert!(packets(&lab) >= counted);
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), answer(OUT));
    assert!(packets(&lab) > counted);

    let exported = lab.nsport_ok(&["export"]);
    let file: serde_json::Value = serde_json::from_str(&exported).unwrap();
    let limited: Vec<&serde_json::Value> = file["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry.get("allow_from").is_some())
        .collect();
    assert_eq!(limited.len(), 1, "{file}");
    assert_eq!(limited[0]["allow_from"], serde_json::json!(["192.0.2.2"]));
    assert_eq!(limited[0]["publish"], "8080:80/tcp");

    // Into an empty table, the list comes back and holds.
    let path = TempFile(lab.state_dir().with_extension("export.json"));
    std::fs::write(&path.0, &exported).unwrap();
    lab.nsport_ok(&["flush"]);
    lab.nsport_ok(&["apply", path.0.to_str().unwrap()]);
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), answer(OUT));
    assert_eq!(connect(&lab, "ns3", HOST_V3, 8080), Met::Refused);
    assert!(matches!(
        connect(&lab, "ns3", HOST_V3, 3000),
        Met::Answer(_)
    ));
    // apply of the same file changes nothing.
    let before = lab.ruleset();
    lab.nsport_ok(&["apply", path.0.to_str().unwrap()]);
    assert_eq!(lab.ruleset(), before);

    // export --nft carries the lists into another host.
    let script = lab.nsport_ok(&["export", "--nft"]);
    let twin = Lab::new(BrNetfilter::On);
    let copy = TempFile(twin.state_dir().with_extension("export.nft"));
    std::fs::write(&copy.0, &script).unwrap();
    twin.nft("host", &format!("-f {}", copy.0.display()));
    assert_eq!(elements(&twin, "allow4"), "192.0.2.2 . 8080 . tcp");
    assert_eq!(elements(&twin, "limited"), "8080 . tcp");
}

#[test]
fn a_neighbour_cannot_pass_as_the_hosts_loopback() {
    // ns2 routes 127/8 to the host and route_localnet lets the host take such sources on
    // br0 (nsport turns it on there for 127.0.0.1 publishes): a forged 127.0.0.1 source
    // must not pass the loopback exemption of an allow-list.
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    let _server = lab.serve_udp("ns1", Ipv4Addr::UNSPECIFIED, 53);
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "5353:53/udp",
        "--allow-from",
        "192.0.2.2",
    ]);
    assert_eq!(
        lab.read_sysctl("host", "net/ipv4/conf/br0/route_localnet"),
        "1"
    );
    // ns2 sends from 127.0.0.2 on its eth0 (route_localnet lets it) to the host's bridge
    // address; ns1 would see the datagram if it got through.
    lab.ip("ns2", "addr add 127.0.0.2/32 dev eth0");
    let seen = lab.run_in("ns2", || {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let sent = socket.send_to(b"?", (HOST_BR, 5353));
        sent.map(|_| socket.recv(&mut [0; 64]).is_ok())
            .unwrap_or(false)
    });
    assert!(!seen, "a forged loopback source reached the target");
    // The counter of the mapping saw nothing either: the guard dropped it first.
    let rows = listing(&lab);
    assert_eq!(rows[0]["packets"], 0, "{rows:?}");
}

#[test]
fn a_layout_2_table_migrates_when_a_list_is_first_added() {
    // The bridge scenario's table as the nsport before allow-lists wrote it (layout 2).
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    assert!(
        lab.load_fixture("nft/v2/bridge.nft")
            .contains("nsport-layout=2")
    );
    lab.write_sysctl("host", "net/ipv4/ip_forward", "1");
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    assert!(matches!(
        connect(&lab, "out", HOST_OUT, 3000),
        Met::Answer(_)
    ));

    let output = lab.nsport(&[
        "add",
        "--netns",
        &ns1,
        "8080:3000",
        "--allow-from",
        "10.77.0.2",
    ]);
    assert!(output.status.success(), "{output:?}");
    let table = lab.nft("host", "list table inet nsport");
    assert!(table.contains("nsport-layout=4"), "{table}");
    // Every mapping is kept; the new port has its list, the old ones none.
    assert_eq!(listing(&lab).len(), 5);
    assert!(matches!(
        connect(&lab, "out", HOST_OUT, 3000),
        Met::Answer(_)
    ));
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), Met::Refused);
    assert_eq!(connect(&lab, "ns3", HOST_V3, 8080), answer(NS3));
}

/// A table of layout 3, whose allow-lists lead their keys with the protocol (kept in
/// `nft/v3/`, written by the golden scenario's commands), is read in its own order and
/// rebuilt with every list: the same rows before and after, listed sources served and
/// others refused in both families, and the very table nsport writes for the same commands.
#[test]
fn a_layout_3_table_keeps_its_lists_through_migration() {
    let lab = Lab::dual_stack(BrNetfilter::On);
    let v3 = lab.load_fixture("nft/v3/allow-from.nft");
    assert!(v3.contains("nsport-layout=3"));
    lab.write_sysctl("host", "net/ipv4/ip_forward", "1");
    lab.write_sysctl("host", "net/ipv6/conf/all/forwarding", "1");
    let _server = lab.serve_tcp("ns1", ANY, 80);
    let before = lab.rows_but_counters();
    assert_eq!(before.len(), 5, "{before:?}");
    assert!(
        before
            .iter()
            .any(|row| row.contains("192.0.2.0/24") && row.contains("2001:db8::/48")),
        "layout 3's lists were not read: {before:?}"
    );

    lab.nsport_ok(&["migrate"]);
    let table = lab.nft("host", "list table inet nsport");
    assert!(table.contains("nsport-layout=4"), "{table}");
    assert_eq!(lab.rows_but_counters(), before);
    // The server listens on both families: IPv4 clients show as mapped addresses.
    assert_eq!(
        connect(&lab, "out", HOST_OUT, 8080),
        Met::Answer(format!("::ffff:{OUT}"))
    );
    assert_eq!(connect(&lab, "ns2", HOST_BR, 8080), Met::Refused);
    assert_eq!(connect(&lab, "out", v6::HOST_OUT, 8080), answer(v6::OUT));
    assert_eq!(connect(&lab, "ns2", v6::HOST_BR, 8080), Met::Refused);
    // Counters start again at a migration, and no packet went through a mapping of the
    // golden table: the rebuilt table is the golden one but for the refused packets.
    let golden = read_fixture("nft/allow-from.nft");
    let now = without_counter_values(&sort_elements(&hide_inodes(&lab.normalize(&table))));
    assert_eq!(now, without_counter_values(&golden));
}

/// The CNI configuration nsport gets after Debian's bridge plugin, with `conditions`.
fn cni_config(result: &serde_json::Value, conditions: serde_json::Value) -> serde_json::Value {
    let mut config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "labnet",
        "type": "nsport",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        ]},
        "prevResult": result,
    });
    for (field, value) in conditions.as_object().unwrap() {
        config[field] = value.clone();
    }
    config
}

#[test]
fn cni_conditions_on_sources_and_destinations_become_allow_lists() {
    let mut lab = Lab::new(BrNetfilter::On);
    lab.add_namespace("ctr");
    let ctr = lab.ns("ctr");
    let result = lab.cni_attach("c1", &ctr);
    let _server = lab.serve_tcp("ctr", Ipv4Addr::UNSPECIFIED, 80);
    let nsport = env!("CARGO_BIN_EXE_nsport");

    // portmap's iptables form: a source and a destination.
    let config = cni_config(
        &result,
        serde_json::json!({"conditionsV4": ["-s", "192.0.2.2/32", "-d", "192.0.2.1"]}),
    );
    let output = lab.cni(nsport, "ADD", "c1", &ctr, &config);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), answer(OUT));
    // Published on 192.0.2.1 only, and for 192.0.2.2 only.
    assert_eq!(connect(&lab, "out", HOST_OUT2, 8080), Met::Refused);
    assert_eq!(connect(&lab, "ns3", HOST_V3, 8080), Met::Refused);
    let rows = listing(&lab);
    assert_eq!(rows[0]["host_addr"], "192.0.2.1", "{rows:?}");
    // IPv6 had no condition, so every IPv6 source stays allowed.
    assert_eq!(
        rows[0]["allow_from"],
        serde_json::json!(["192.0.2.2", "::/0"])
    );
    let check = |lab: &Lab| lab.cni(nsport, "CHECK", "c1", &ctr, &config);
    assert!(check(&lab).status.success());
    // CHECK sees a list that is not what the conditions ask for; ADD puts it back.
    lab.nft(
        "host",
        "delete element inet nsport allow4 { 192.0.2.2 . 8080 . tcp }",
    );
    let error: serde_json::Value = serde_json::from_slice(&check(&lab).stdout).unwrap();
    assert_eq!(error["code"], 101, "{error}");
    let msg = error["msg"].as_str().unwrap();
    assert!(msg.contains("allows ::/0, not 192.0.2.2, ::/0"), "{error}");
    assert!(lab.cni(nsport, "ADD", "c1", &ctr, &config).status.success());
    assert!(check(&lab).status.success());
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), answer(OUT));
    assert!(lab.cni(nsport, "DEL", "c1", &ctr, &config).status.success());
    assert_eq!(elements(&lab, "limited"), "");
    assert_eq!(elements(&lab, "allow4"), "");

    // The nftables form.
    let config = cni_config(
        &result,
        serde_json::json!({"conditionsV4": ["ip saddr { 10.77.0.0/30, 198.51.100.0/24 }"]}),
    );
    let output = lab.cni(nsport, "ADD", "c1", &ctr, &config);
    assert!(output.status.success(), "{output:?}");
    assert!(matches!(
        connect(&lab, "ns3", HOST_V3, 8080),
        Met::Answer(_)
    ));
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), Met::Refused);
    assert!(lab.cni(nsport, "DEL", "c1", &ctr, &config).status.success());

    // Anything else is refused with the spec's code 2, saying what is supported, and
    // nothing changes.
    let before = lab.ruleset();
    for conditions in [
        serde_json::json!({"conditionsV4": ["-p", "tcp", "--dport", "8080"]}),
        serde_json::json!({"conditionsV4": ["!", "-s", "10.0.0.0/8"]}),
        serde_json::json!({"conditionsV6": ["meta mark 0x1"]}),
    ] {
        let output = lab.cni(
            nsport,
            "ADD",
            "c1",
            &ctr,
            &cni_config(&result, conditions.clone()),
        );
        assert!(!output.status.success(), "{conditions}");
        let error: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(error["code"], 2, "{error}");
        assert!(
            error["msg"].as_str().unwrap().contains("is not supported"),
            "{error}"
        );
        assert!(
            error["details"].as_str().unwrap().contains("--src-range"),
            "{error}"
        );
        assert_eq!(lab.ruleset(), before, "{conditions}");
    }
}

#[test]
fn concurrent_writers_leave_one_whole_list_per_port() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    let lists = [
        ["192.0.2.0/24", "10.77.0.2"],
        ["198.51.100.0/24", "2001:db8::/32"],
    ];
    let mut children = Vec::new();
    // Eight writers on ports of their own, and four re-adding port 8080 with one of two
    // lists each, all at once.
    for i in 0..8u16 {
        let port = format!("{}:80", 9000 + i);
        let source = format!("10.{i}.0.0/16");
        children.push(lab.spawn_nsport(&["add", "--netns", &ns1, &port, "--allow-from", &source]));
    }
    for i in 0..4 {
        let [a, b] = lists[i % 2];
        children.push(lab.spawn_nsport(&[
            "add",
            "--netns",
            &ns1,
            "8080:80",
            "--allow-from",
            a,
            "--allow-from",
            b,
        ]));
    }
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{output:?}");
    }
    let rows = listing(&lab);
    assert_eq!(rows.len(), 9, "{rows:?}");
    for row in &rows {
        let port = row["host_port"].as_u64().unwrap();
        let list: Vec<&str> = row["allow_from"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        if port == 8080 {
            // One of the two lists, whole: never a mix of both.
            let mut sorted = list.clone();
            sorted.sort();
            assert!(
                lists.iter().any(|l| {
                    let mut l = l.to_vec();
                    l.sort();
                    l == sorted
                }),
                "{list:?}"
            );
        } else {
            assert_eq!(list, [format!("10.{}.0.0/16", port - 9000)], "{row}");
        }
    }
    // The kernel holds exactly what ls says: one element per prefix, one per port.
    let allow4 = elements(&lab, "allow4");
    let allow6 = elements(&lab, "allow6");
    assert_eq!(
        allow4.matches(". tcp").count() + allow6.matches(". tcp").count(),
        10
    );
    assert_eq!(elements(&lab, "limited").matches(". tcp").count(), 9);
}

#[test]
fn a_range_has_one_list_element_and_no_port_inside_it_another_list() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 9005);
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "9000-9009",
        "--allow-from",
        "192.0.2.2",
    ]);
    assert_eq!(elements(&lab, "limited"), "9000-9009 . tcp");
    assert_eq!(elements(&lab, "allow4"), "192.0.2.2 . 9000-9009 . tcp");
    assert_eq!(connect(&lab, "out", HOST_OUT, 9005), answer(OUT));
    assert_eq!(connect(&lab, "ns3", HOST_V3, 9005), Met::Refused);
    let before = lab.ruleset();
    // Forced past Docker's overlap rule, the port inside the range still meets its list.
    let output = lab.nsport(&["add", "--force", "--netns", &ns1, "198.51.100.1:9005:9005"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("only 192.0.2.2"), "{error}");
    assert_eq!(lab.ruleset(), before);
    lab.nsport_ok(&["rm", "9000-9009"]);
    assert_eq!(elements(&lab, "limited"), "");
    assert_eq!(elements(&lab, "allow4"), "");
}

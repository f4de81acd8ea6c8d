//! The eleven behaviours of `nsport add/rm/ls/flush`, each with real traffic through a lab
//! of namespaces (see `lab/mod.rs`). nsport runs in the lab's `host` namespace.

mod lab;

use lab::*;

/// Publishes ns1's port 3000 and starts its server.
fn published_ns1(br_netfilter: BrNetfilter) -> (Lab, Server) {
    let lab = Lab::new(br_netfilter);
    let server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    // Control: nothing outside ns1 reaches the port before it is published.
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), None);
    assert_eq!(lab.tcp("host", LOCALHOST, 3000), None);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000:3000"]);
    (lab, server)
}

use std::net::Ipv4Addr;

#[test]
fn outside_client_reaches_namespace_with_its_own_address() {
    let (lab, _server) = published_ns1(BrNetfilter::Off);
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), some(OUT));
    assert_eq!(lab.tcp("out", HOST_OUT2, 3000), some(OUT));
    assert_eq!(lab.read_sysctl("host", "net/ipv4/ip_forward"), "1");
}

#[test]
fn host_reaches_namespace_through_each_own_address_and_loopback() {
    let (lab, _server) = published_ns1(BrNetfilter::On);
    for addr in [HOST_OUT, HOST_OUT2, HOST_BR, HOST_V3] {
        assert!(lab.tcp("host", addr, 3000).is_some(), "host -> {addr}:3000");
    }
    // 127.0.0.1 is DNATed out of br0 and masqueraded to br0's address.
    assert_eq!(lab.tcp("host", LOCALHOST, 3000), some(HOST_BR));
    assert_eq!(
        lab.read_sysctl("host", "net/ipv4/conf/br0/route_localnet"),
        "1"
    );
    // route_localnet is set on the interface toward the target only.
    assert_eq!(
        lab.read_sysctl("host", "net/ipv4/conf/vo/route_localnet"),
        "0"
    );
}

fn hairpin_and_neighbour(br_netfilter: BrNetfilter) {
    let (lab, _server) = published_ns1(br_netfilter);
    for addr in [HOST_OUT, HOST_BR] {
        // The namespace reaches itself through the host, masqueraded by the hairpin rule.
        assert_eq!(lab.tcp("ns1", addr, 3000), some(HOST_BR), "ns1 -> {addr}");
        // A neighbour on the same bridge reaches it too.
        assert!(lab.tcp("ns2", addr, 3000).is_some(), "ns2 -> {addr}");
    }
    // So does a namespace behind another interface.
    assert!(lab.tcp("ns3", HOST_V3, 3000).is_some());
}

#[test]
fn hairpin_and_neighbour_with_br_netfilter() {
    hairpin_and_neighbour(BrNetfilter::On);
}

#[test]
fn hairpin_and_neighbour_without_br_netfilter() {
    hairpin_and_neighbour(BrNetfilter::Off);
}

#[test]
fn udp_takes_every_path() {
    let lab = Lab::new(BrNetfilter::On);
    let _server = lab.serve_udp("ns1", Ipv4Addr::UNSPECIFIED, 53);
    assert_eq!(lab.udp("out", HOST_OUT, 5353), None);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "5353:53/udp"]);
    assert_eq!(lab.udp("out", HOST_OUT, 5353), some(OUT));
    assert!(lab.udp("host", HOST_OUT, 5353).is_some());
    assert_eq!(lab.udp("host", LOCALHOST, 5353), some(HOST_BR));
    assert_eq!(lab.udp("ns1", HOST_OUT, 5353), some(HOST_BR));
    assert!(lab.udp("ns2", HOST_BR, 5353).is_some());
    // TCP on the same port is not published.
    assert_eq!(lab.tcp("out", HOST_OUT, 5353), None);
}

#[test]
fn loopback_publish_is_reachable_on_loopback_only() {
    let lab = Lab::new(BrNetfilter::On);
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "127.0.0.1:4000:3000"]);
    assert_eq!(lab.tcp("host", LOCALHOST, 4000), some(HOST_BR));
    for addr in [HOST_OUT, HOST_BR, HOST_V3] {
        assert_eq!(lab.tcp("host", addr, 4000), None, "host -> {addr}:4000");
        assert_eq!(lab.tcp("out", addr, 4000), None, "out -> {addr}:4000");
        assert_eq!(lab.tcp("ns2", addr, 4000), None, "ns2 -> {addr}:4000");
    }
    // Neighbours that route 127.0.0.0/8 to the host: the outside one and one on the bridge,
    // where route_localnet is on.
    assert_eq!(lab.tcp("out", LOCALHOST, 4000), None);
    assert_eq!(lab.tcp("ns2", LOCALHOST, 4000), None);
    // Control: without the guard the bridge neighbour does get in, so the check above is real.
    lab.nft("host", "delete chain inet nsport guard");
    assert_eq!(lab.tcp("ns2", LOCALHOST, 4000), some(NS2));
}

#[test]
fn host_address_publish_answers_on_that_address_only() {
    let lab = Lab::new(BrNetfilter::Off);
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "192.0.2.1:4100:3000"]);
    assert_eq!(lab.tcp("out", HOST_OUT, 4100), some(OUT));
    assert!(lab.tcp("host", HOST_OUT, 4100).is_some());
    assert_eq!(lab.tcp("out", HOST_OUT2, 4100), None);
    assert_eq!(lab.tcp("host", HOST_BR, 4100), None);
    assert_eq!(lab.tcp("host", LOCALHOST, 4100), None);
    assert_eq!(lab.tcp("ns2", HOST_BR, 4100), None);
    // Not a loopback publish: route_localnet stays as it was.
    assert_eq!(
        lab.read_sysctl("host", "net/ipv4/conf/br0/route_localnet"),
        "0"
    );
}

fn check_veth_target(lab: &Lab) {
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), some(OUT));
    assert_eq!(lab.tcp("host", LOCALHOST, 3000), some(HOST_V3));
    assert_eq!(lab.tcp("ns3", HOST_OUT, 3000), some(HOST_V3));
    assert!(lab.tcp("ns1", HOST_OUT, 3000).is_some());
    let listing: serde_json::Value =
        serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    assert_eq!(listing[0]["via"], "v3");
    assert_eq!(listing[0]["to_addr"], "10.77.0.2");
}

#[test]
fn namespace_behind_bare_veth_works_with_to_and_netns() {
    let lab = Lab::new(BrNetfilter::On);
    let _server = lab.serve_tcp("ns3", Ipv4Addr::UNSPECIFIED, 3000);
    lab.nsport_ok(&["add", "--to", "10.77.0.2", "3000"]);
    check_veth_target(&lab);
    lab.nsport_ok(&["rm", "3000"]);
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), None);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns3"), "3000"]);
    check_veth_target(&lab);
}

#[test]
fn localhost_publishing_does_not_open_the_hosts_loopback() {
    let lab = Lab::new(BrNetfilter::On);
    let _secret = lab.serve_tcp("host", LOCALHOST, 7000);
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    let _server3 = lab.serve_tcp("ns3", Ipv4Addr::UNSPECIFIED, 3000);
    // ns3 becomes an attacker too: 127/8 routed to the host over the bare veth.
    for cmd in ["addr flush dev lo", "route add 127.0.0.0/8 via 10.77.0.1"] {
        let ns = lab.ns("ns3");
        let mut args = vec!["ip", "-n", &ns];
        args.extend(cmd.split_whitespace());
        sh(&args);
    }
    lab.write_sysctl("ns3", "net/ipv4/conf/eth0/route_localnet", "1");
    lab.write_sysctl("ns3", "net/ipv4/conf/all/route_localnet", "1");
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    lab.nsport_ok(&["add", "--to", "10.77.0.2", "127.0.0.1:4000:3000"]);
    for iface in ["br0", "v3"] {
        let key = format!("net/ipv4/conf/{iface}/route_localnet");
        assert_eq!(lab.read_sysctl("host", &key), "1", "{key}");
    }
    assert!(lab.tcp("host", LOCALHOST, 7000).is_some());
    for attacker in ["ns2", "ns3", "out"] {
        assert_eq!(lab.tcp(attacker, LOCALHOST, 7000), None, "{attacker}");
    }
    // Control: without the guard, route_localnet lets both inner neighbours in.
    lab.nft("host", "delete chain inet nsport guard");
    assert_eq!(lab.tcp("ns2", LOCALHOST, 7000), some(NS2));
    assert_eq!(lab.tcp("ns3", LOCALHOST, 7000), some(NS3));
}

#[test]
fn rm_and_flush_remove_exactly_what_they_name() {
    let lab = Lab::new(BrNetfilter::On);
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    let _udp = lab.serve_udp("ns1", Ipv4Addr::UNSPECIFIED, 53);
    let _server3 = lab.serve_tcp("ns3", Ipv4Addr::UNSPECIFIED, 3000);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "3000", "3001:3000", "5353:53/udp"]);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns3"), "3002:3000"]);
    for port in [3000, 3001, 3002] {
        assert!(lab.tcp("out", HOST_OUT, port).is_some(), "{port}");
    }

    lab.nsport_ok(&["rm", "3001"]);
    assert_eq!(lab.tcp("out", HOST_OUT, 3001), None);
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), some(OUT));
    assert_eq!(lab.tcp("out", HOST_OUT, 3002), some(OUT));
    assert_eq!(lab.udp("out", HOST_OUT, 5353), some(OUT));

    lab.nsport_ok(&["rm", "--netns", &ns1]);
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), None);
    assert_eq!(lab.udp("out", HOST_OUT, 5353), None);
    assert_eq!(lab.tcp("out", HOST_OUT, 3002), some(OUT));
    let listing: serde_json::Value =
        serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    assert_eq!(listing.as_array().unwrap().len(), 1);
    assert_eq!(listing[0]["host_port"], 3002);
    // The bridge's interface and ns1's hairpin element went with ns1's last mapping.
    let table = lab.nft("host", "list table inet nsport");
    assert!(!table.contains("\"br0\""), "{table}");
    assert!(!table.contains("172.18.0.2"), "{table}");

    lab.nsport_ok(&["flush"]);
    assert_eq!(lab.tcp("out", HOST_OUT, 3002), None);
    assert!(!lab.ruleset().contains("nsport"));
    // Flushing again, with no table, succeeds.
    lab.nsport_ok(&["flush"]);
    assert_eq!(lab.nsport_ok(&["ls", "--json"]).trim(), "[]");
}

#[test]
fn tables_nsport_did_not_make_are_never_changed() {
    let lab = Lab::new(BrNetfilter::On);
    let bystander = "table inet bystander {\n\tset blocked {\n\t\ttype ipv4_addr\n\t\telements = { 203.0.113.7 }\n\t}\n\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tip saddr @blocked drop\n\t\ttcp dport 22 counter packets 0 bytes 0 accept\n\t}\n}\ntable ip nat {\n\tchain PREROUTING {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\ttcp dport 9999 dnat to 172.18.0.3:9999\n\t}\n}\n";
    let path = std::env::temp_dir().join(format!("{}.nft", lab.ns("bystander")));
    std::fs::write(&path, bystander).unwrap();
    lab.nft("host", &format!("-f {}", path.display()));
    std::fs::remove_file(&path).unwrap();
    let before = lab.ruleset();
    let bystander = without_counter_values(bystander);
    assert_eq!(before, bystander);

    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    lab.nsport_ok(&[
        "add",
        "--netns",
        &lab.ns("ns1"),
        "3000",
        "127.0.0.1:4000:3000",
    ]);
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), some(OUT));
    let during = lab.ruleset();
    assert!(during.starts_with(&bystander), "{during}");
    lab.nsport_ok(&["rm", "3000"]);
    assert!(lab.ruleset().starts_with(&bystander));
    lab.nsport_ok(&["flush"]);
    assert_eq!(lab.ruleset(), before);
}

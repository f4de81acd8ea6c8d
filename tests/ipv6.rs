//! IPv6 publishing with the guarantees of IPv4, in a dual-stack lab (see `lab/mod.rs`):
//! real connections from outside, from the host, from the namespace itself and from its
//! neighbours, over both families.

mod lab;

use lab::*;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6, TcpStream};
use std::time::Duration;

/// What a server on `[::]` sees of an IPv4 client.
fn mapped(v4: Ipv4Addr) -> Option<String> {
    Some(v4.to_ipv6_mapped().to_string())
}

fn listing(lab: &Lab) -> Vec<serde_json::Value> {
    let text = lab.nsport_ok(&["ls", "--json"]);
    serde_json::from_str::<serde_json::Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn wildcard_on_both_families(br_netfilter: BrNetfilter) {
    let lab = Lab::dual_stack(br_netfilter);
    let _server = lab.serve_tcp("ns1", ANY, 80);
    assert_eq!(lab.tcp("out", v6::HOST_OUT, 8080), None);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "8080:80"]);
    let mappings = listing(&lab);
    assert_eq!(mappings.len(), 2, "{mappings:?}");
    assert_eq!(mappings[0]["to_addr"], "172.18.0.2");
    assert_eq!(mappings[0]["loopback"], true);
    assert_eq!(mappings[1]["to_addr"], "2001:db8:1::2");
    assert_eq!(mappings[1]["loopback"], false);
    assert_eq!(lab.read_sysctl("host", "net/ipv6/conf/all/forwarding"), "1");

    // From outside, with the client's own address kept, on both families.
    assert_eq!(lab.tcp("out", v6::HOST_OUT, 8080), some(v6::OUT));
    assert_eq!(lab.tcp("out", v6::HOST_OUT2, 8080), some(v6::OUT));
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), mapped(OUT));
    // From the host through each of its IPv6 addresses.
    for addr in [v6::HOST_OUT, v6::HOST_OUT2, v6::HOST_BR, v6::HOST_V3] {
        assert!(
            lab.tcp("host", addr, 8080).is_some(),
            "host -> [{addr}]:8080"
        );
    }
    // Hairpin, masqueraded so that the replies come back through the host.
    assert_eq!(lab.tcp("ns1", v6::HOST_OUT, 8080), some(v6::HOST_BR));
    assert_eq!(lab.tcp("ns1", v6::HOST_BR, 8080), some(v6::HOST_BR));
    // Neighbours on the bridge and behind another interface.
    assert!(lab.tcp("ns2", v6::HOST_OUT, 8080).is_some());
    assert!(lab.tcp("ns3", v6::HOST_V3, 8080).is_some());
    // [::1] is not DNATed: the connection is refused at once instead of vanishing.
    assert_eq!(lab.tcp("host", Ipv6Addr::LOCALHOST, 8080), None);
    assert!(lab.nsport_ok(&["ls"]).contains("[*]:8080"));
}

#[test]
fn wildcard_publish_serves_both_families_with_br_netfilter() {
    wildcard_on_both_families(BrNetfilter::On);
}

#[test]
fn wildcard_publish_serves_both_families_without_br_netfilter() {
    wildcard_on_both_families(BrNetfilter::Off);
}

#[test]
fn udp_over_ipv6() {
    let lab = Lab::dual_stack(BrNetfilter::On);
    let _server = lab.serve_udp("ns1", ANY, 53);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "5353:53/udp"]);
    assert_eq!(lab.udp("out", v6::HOST_OUT, 5353), some(v6::OUT));
    assert_eq!(lab.udp("ns1", v6::HOST_OUT, 5353), some(v6::HOST_BR));
    assert!(lab.udp("ns2", v6::HOST_BR, 5353).is_some());
}

#[test]
fn bracketed_host_address_answers_on_that_address_only() {
    let lab = Lab::dual_stack(BrNetfilter::Off);
    let _server = lab.serve_tcp("ns1", ANY, 80);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "[2001:0db8:0::1]:8081:80"]);
    let mappings = listing(&lab);
    assert_eq!(mappings.len(), 1);
    // Canonical text form in the listing.
    assert_eq!(mappings[0]["host_addr"], "2001:db8::1");
    assert_eq!(mappings[0]["to_addr"], "2001:db8:1::2");
    assert_eq!(lab.tcp("out", v6::HOST_OUT, 8081), some(v6::OUT));
    assert_eq!(lab.tcp("out", v6::HOST_OUT2, 8081), None);
    assert_eq!(lab.tcp("host", v6::HOST_BR, 8081), None);
    assert_eq!(lab.tcp("out", HOST_OUT, 8081), None);
    assert!(lab.nsport_ok(&["ls"]).contains("[2001:db8::1]:8081"));
    lab.nsport_ok(&["rm", "[2001:db8::1]:8081"]);
    assert_eq!(lab.tcp("out", v6::HOST_OUT, 8081), None);
    assert!(listing(&lab).is_empty());
}

#[test]
fn ipv6_target_by_address_or_single_stack_namespace_publishes_ipv6_only() {
    let lab = Lab::dual_stack(BrNetfilter::On);
    let _server = lab.serve_tcp("ns3", ANY, 80);
    lab.nsport_ok(&["add", "--to", "2001:db8:3::2", "9000:80"]);
    let mappings = listing(&lab);
    assert_eq!(mappings.len(), 1);
    assert_eq!(mappings[0]["via"], "v3");
    assert_eq!(lab.tcp("out", v6::HOST_OUT, 9000), some(v6::OUT));
    assert_eq!(lab.tcp("out", HOST_OUT, 9000), None);
    assert_eq!(lab.tcp("ns3", v6::HOST_OUT, 9000), some(v6::HOST_V3));
    // ns3 loses its IPv4 address: a wildcard publish by name is IPv6 only.
    lab.ip("ns3", "addr del 10.77.0.2/30 dev eth0");
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns3"), "9100:80"]);
    let mappings = listing(&lab);
    assert_eq!(mappings.len(), 2);
    assert!(mappings.iter().all(|m| m["to_addr"] == "2001:db8:3::2"));
    assert_eq!(lab.tcp("out", v6::HOST_OUT, 9100), some(v6::OUT));
    // An IPv4 host address for an IPv6-only target is refused, naming the mismatch.
    let output = lab.nsport(&["add", "--netns", &lab.ns("ns3"), "192.0.2.1:9200:80"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("192.0.2.1:9200:80/tcp") && stderr.contains("IPv4"),
        "{stderr}"
    );
}

#[test]
fn ipv6_loopback_is_refused_with_an_explanation() {
    let lab = Lab::dual_stack(BrNetfilter::Off);
    let before = lab.ruleset();
    for spec in ["[::1]:8080:80", "[0:0::1]:8080:80/udp"] {
        let output = lab.nsport(&["add", "--netns", &lab.ns("ns1"), spec]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("[::1]") && stderr.contains("route_localnet"),
            "{stderr}"
        );
        assert!(stderr.contains("instead"), "says what to do: {stderr}");
    }
    assert_eq!(lab.ruleset(), before);
}

/// The link-local address of `iface` in `role`, and the interface's index there.
fn link_local(lab: &Lab, role: &str, iface: &str) -> (Ipv6Addr, u32) {
    let ns = lab.ns(role);
    let text = String::from_utf8(
        sh(&[
            "ip", "-n", &ns, "-o", "-6", "addr", "show", "dev", iface, "scope", "link",
        ])
        .stdout,
    )
    .unwrap();
    let index: u32 = text.split(':').next().unwrap().trim().parse().unwrap();
    let addr = text
        .split_whitespace()
        .skip_while(|word| *word != "inet6")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (addr, index)
}

#[test]
fn link_local_traffic_is_never_dnated() {
    let lab = Lab::dual_stack(BrNetfilter::Off);
    let _server = lab.serve_tcp("ns1", ANY, 80);
    let (ll_server, vo) = link_local(&lab, "host", "vo");
    let (_, out_eth0) = link_local(&lab, "out", "eth0");
    // A host service on its link-local address, port 8080, published on every address.
    let _local = lab.serve_tcp_at("host", SocketAddrV6::new(ll_server, 8080, 0, vo).into());
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "8080:80"]);
    let reach_link_local = || {
        lab.run_in("out", || {
            let target = SocketAddrV6::new(ll_server, 8080, 0, out_eth0);
            let mut stream =
                TcpStream::connect_timeout(&target.into(), Duration::from_millis(800)).ok()?;
            stream
                .set_read_timeout(Some(Duration::from_millis(800)))
                .unwrap();
            let mut answer = String::new();
            std::io::Read::read_to_string(&mut stream, &mut answer).ok()?;
            Some(answer)
        })
    };
    // The neighbour reaches the host's own link-local service, not the namespace.
    let answer = reach_link_local().expect("the link-local service answers");
    assert!(answer.starts_with("fe80::"), "{answer}");
    assert_eq!(lab.tcp("out", v6::HOST_OUT, 8080), some(v6::OUT));
    // Control: without the link-local rules the publish hijacks it.
    let rules = lab.nft("host", "-a list chain inet nsport publish");
    let handles: Vec<&str> = rules
        .lines()
        .filter(|line| line.contains("fe80::/10 return"))
        .filter_map(|line| line.rsplit("handle ").next())
        .collect();
    assert_eq!(handles.len(), 2, "{rules}");
    for handle in handles {
        lab.nft(
            "host",
            &format!("delete rule inet nsport publish handle {handle}"),
        );
    }
    assert_eq!(reach_link_local(), None);
}

#[test]
fn unpublished_ipv6_ports_are_not_reachable_directly() {
    let lab = Lab::dual_stack(BrNetfilter::Off);
    let _published = lab.serve_tcp("ns1", ANY, 80);
    let _private = lab.serve_tcp("ns1", ANY, 2222);
    lab.ip("out", "-6 route add 2001:db8:1::/64 via 2001:db8::1");
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "8080:80"]);
    assert_eq!(lab.tcp("out", v6::HOST_OUT, 8080), some(v6::OUT));
    assert_eq!(lab.tcp("out", v6::NS1, 2222), None);
    assert_eq!(lab.tcp("out", v6::NS1, 80), None);
    lab.nft("host", "delete chain inet nsport forward");
    assert_eq!(lab.tcp("out", v6::NS1, 2222), some(v6::OUT));
}

#[test]
fn rm_and_flush_cover_both_families() {
    let lab = Lab::dual_stack(BrNetfilter::On);
    let _server = lab.serve_tcp("ns1", ANY, 80);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "8080:80", "8081:80"]);
    assert_eq!(listing(&lab).len(), 4);
    // The host side alone names both families of a wildcard publish.
    lab.nsport_ok(&["rm", "8080"]);
    assert_eq!(lab.tcp("out", v6::HOST_OUT, 8080), None);
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), None);
    assert_eq!(lab.tcp("out", v6::HOST_OUT, 8081), some(v6::OUT));
    lab.nsport_ok(&["rm", "--netns", &ns1]);
    assert!(listing(&lab).is_empty());
    let table = lab.nft("host", "list table inet nsport");
    assert!(!table.contains("2001:db8:1::2"), "{table}");
    lab.nsport_ok(&["add", "--netns", &ns1, "8080:80"]);
    lab.nsport_ok(&["flush"]);
    assert!(!lab.ruleset().contains("nsport"));
}

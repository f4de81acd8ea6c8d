//! Publishing on an interface (`add --on IFACE`), with real traffic: only what arrives on
//! that interface is translated, whatever address it is sent to; the interface need not
//! exist nor have an address when the port is published (a host that boots before DHCP
//! has run); the host itself, hairpin and neighbours do not arrive on it.

mod lab;

use lab::*;
use std::net::Ipv4Addr;

/// An address of the interface that appears late (TEST-NET-3).
const LATE_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const LATE_CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

fn json_rows(lab: &Lab) -> Vec<serde_json::Value> {
    serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap()
}

#[test]
fn answers_what_arrives_on_its_interface_and_nothing_else() {
    let lab = Lab::new(BrNetfilter::On);
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 80);
    // Control: nothing is published yet.
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), None);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "--on", "vo", "8080:80"]);
    // `out` sits behind vo: both of vo's addresses answer, with the client's address kept.
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), some(OUT));
    assert_eq!(lab.tcp("out", HOST_OUT2, 8080), some(OUT));
    // Any local address, as long as it arrives on vo: v3's address too.
    assert_eq!(lab.tcp("out", HOST_V3, 8080), some(OUT));
    // ns3 sends to the very same address, but through v3: not translated.
    assert_eq!(lab.tcp("ns3", HOST_OUT, 8080), None);
    // The host itself has no input interface, and neither hairpin (ns1) nor a neighbour
    // (ns2) arrives on vo.
    for addr in [HOST_OUT, LOCALHOST, HOST_BR] {
        assert_eq!(lab.tcp("host", addr, 8080), None, "host -> {addr}");
    }
    assert_eq!(lab.tcp("ns1", HOST_OUT, 8080), None);
    assert_eq!(lab.tcp("ns2", HOST_BR, 8080), None);
    // Nothing serves 127.0.0.1, so route_localnet stays off.
    assert_eq!(
        lab.read_sysctl("host", "net/ipv4/conf/br0/route_localnet"),
        "0"
    );
    // Listed with its interface, and its packets counted.
    let listing = lab.nsport_ok(&["ls"]);
    assert!(listing.contains("*:8080 on vo"), "{listing}");
    let rows = json_rows(&lab);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["on"], "vo");
    assert_eq!(rows[0]["loopback"], false);
    assert!(rows[0]["packets"].as_u64().unwrap() > 0, "{rows:?}");
    // Decoded by nft as written.
    let table = lab.nft("host", "list table inet nsport");
    assert!(
        table.contains(r#"elements = { "vo" . tcp . 8080 counter"#),
        "{table}"
    );
    // rm needs the interface: the plain host port is not published.
    assert!(!lab.nsport(&["rm", "8080"]).status.success());
    lab.nsport_ok(&["rm", "--on", "vo", "8080"]);
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), None);
}

#[test]
fn published_before_the_interface_exists_and_before_it_has_an_address() {
    let mut lab = Lab::new(BrNetfilter::Off);
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 80);
    // No interface up9 anywhere yet: publishing on it succeeds (no "cannot assign
    // requested address").
    assert!(!lab.ip_output("host", "link show").contains("up9"));
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "--on", "up9", "8080:80"]);
    // The interface comes, without an address, then a client behind it.
    lab.add_namespace("late");
    lab.ip(
        "host",
        &format!(
            "link add up9 type veth peer name eth0 netns {}",
            lab.ns("late")
        ),
    );
    lab.ip("host", "link set up9 up");
    lab.ip("late", &format!("addr add {LATE_CLIENT}/24 dev eth0"));
    lab.ip("late", "link set eth0 up");
    lab.ip("late", "link set lo up");
    lab.ip("late", &format!("route add default via {LATE_HOST}"));
    assert_eq!(lab.tcp("late", LATE_HOST, 8080), None);
    // DHCP has run: the address is there, and the mapping answers on it at once.
    lab.ip("host", &format!("addr add {LATE_HOST}/24 dev up9"));
    assert_eq!(lab.tcp("late", LATE_HOST, 8080), some(LATE_CLIENT));
    assert_eq!(lab.tcp("late", HOST_OUT, 8080), some(LATE_CLIENT));
    // Traffic to that address from another interface is not translated.
    assert_eq!(lab.tcp("out", LATE_HOST, 8080), None);
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), None);
}

#[test]
fn combined_with_a_host_address_that_may_come_later() {
    let lab = Lab::new(BrNetfilter::On);
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 80);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "--on", "vo", "198.51.100.1:8080:80"]);
    assert_eq!(lab.tcp("out", HOST_OUT2, 8080), some(OUT));
    // Another address on the same interface, and the same address from another one.
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), None);
    assert_eq!(lab.tcp("ns3", HOST_OUT2, 8080), None);
    // An address the host does not have yet is accepted with --on, and works once given.
    let later = Ipv4Addr::new(192, 0, 2, 77);
    lab.nsport_ok(&["add", "--netns", &ns1, "--on", "vo", "192.0.2.77:8081:80"]);
    assert_eq!(lab.tcp("out", later, 8081), None);
    lab.ip("host", &format!("addr add {later}/24 dev vo"));
    assert_eq!(lab.tcp("out", later, 8081), some(OUT));
    // Without --on the same address is refused, as before.
    let output = lab.nsport(&["add", "--netns", &ns1, "192.0.2.78:8082:80"]);
    assert_eq!(output.status.code(), Some(2));
    let listing = lab.nsport_ok(&["ls"]);
    assert!(listing.contains("198.51.100.1:8080 on vo"), "{listing}");
}

#[test]
fn ipv6_on_an_interface() {
    let lab = Lab::dual_stack(BrNetfilter::On);
    let _server = lab.serve_tcp("ns1", ANY, 80);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "--on", "vo", "8080:80"]);
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "--on",
        "vo",
        "[2001:db8:ff::1]:8081:80",
    ]);
    // Both families, on vo only.
    assert_eq!(lab.tcp("out", v6::HOST_OUT, 8080), some(v6::OUT));
    // The server listens on [::]: an IPv4 client shows as IPv4-mapped.
    assert_eq!(
        lab.tcp("out", HOST_OUT, 8080),
        Some(format!("::ffff:{OUT}"))
    );
    assert_eq!(lab.tcp("ns3", v6::HOST_OUT, 8080), None);
    assert_eq!(lab.tcp("host", v6::HOST_OUT, 8080), None);
    // The address-bound one on its address only.
    assert_eq!(lab.tcp("out", v6::HOST_OUT2, 8081), some(v6::OUT));
    assert_eq!(lab.tcp("out", v6::HOST_OUT, 8081), None);
    assert_eq!(lab.tcp("ns3", v6::HOST_OUT2, 8081), None);
    let table = lab.nft("host", "list table inet nsport");
    assert!(
        table.contains(r#""vo" . 2001:db8:ff::1 . tcp . 8081"#),
        "{table}"
    );
}

#[test]
fn export_and_apply_keep_the_interface() {
    let lab = Lab::new(BrNetfilter::On);
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 80);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "--on", "vo", "8080:80"]);
    let exported = lab.nsport_ok(&["export"]);
    assert!(exported.contains(r#""on":"vo""#), "{exported}");
    let file = TempFile(lab.state_dir().with_extension("mappings.json"));
    std::fs::write(&file.0, &exported).unwrap();
    lab.nsport_ok(&["flush"]);
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), None);
    lab.nsport_ok(&["apply", file.0.to_str().unwrap()]);
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), some(OUT));
    assert_eq!(lab.tcp("ns3", HOST_OUT, 8080), None);
    // Applying it again changes nothing.
    let before = lab.ruleset();
    lab.nsport_ok(&["apply", file.0.to_str().unwrap()]);
    assert_eq!(lab.ruleset(), before);
}

#[test]
fn bad_interfaces_are_refused_naming_them_and_change_nothing() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "3000:3000"]);
    let before = lab.ruleset();
    for (on, spec, named) in [
        ("a-name-of-16-ch", "8080:80", ""),
        ("a-name-of-16-chr", "8080:80", "a-name-of-16-chr"),
        ("eth0:1", "8080:80", "eth0:1"),
        ("eth*", "8080:80", "eth*"),
        ("new\nline", "8080:80", "new\\nline"),
        ("", "8080:80", "\"\""),
        ("lo", "8080:80", "\"lo\""),
        ("vo", "127.0.0.1:8080:80", "127.0.0.1"),
        ("vo", "224.0.0.1:8080:80", "224.0.0.1"),
        ("vo", "169.254.1.1:8080:80", "169.254.1.1"),
        ("vo", "[ff02::1]:8080:80", "ff02::1"),
    ] {
        let output = lab.nsport(&["add", "--netns", &ns1, "--on", on, spec]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if named.is_empty() {
            // 15 bytes is a valid name: accepted (and removed again below).
            assert!(output.status.success(), "{on}: {stderr}");
            lab.nsport_ok(&["rm", "--on", on, "8080"]);
            continue;
        }
        assert_eq!(output.status.code(), Some(2), "{on:?}: {stderr}");
        assert!(stderr.contains(named), "{on:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert_eq!(lab.ruleset(), before, "{on:?} changed the ruleset");
    }
}

/// Published on the bridge toward the namespaces, the port serves the clients on that
/// bridge — neighbours, and the namespace itself through the host (hairpin) — and no one
/// else, with and without br_netfilter (which shows bridged traffic as from the bridge).
fn on_the_bridge(br_netfilter: BrNetfilter) {
    let lab = Lab::new(br_netfilter);
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 80);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "--on", "br0", "8080:80"]);
    assert!(lab.tcp("ns2", HOST_BR, 8080).is_some());
    assert!(lab.tcp("ns2", HOST_OUT, 8080).is_some());
    assert_eq!(lab.tcp("ns1", HOST_BR, 8080), some(HOST_BR));
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), None);
    assert_eq!(lab.tcp("ns3", HOST_V3, 8080), None);
    assert_eq!(lab.tcp("host", HOST_BR, 8080), None);
}

#[test]
fn on_the_bridge_with_br_netfilter() {
    on_the_bridge(BrNetfilter::On);
}

#[test]
fn on_the_bridge_without_br_netfilter() {
    on_the_bridge(BrNetfilter::Off);
}

/// Both directions are counted on the interface-bound element, as on any other: the
/// 200,000 bytes the namespace sends back are counted (the reply direction goes out
/// through vo, which the reply counting keys on).
#[test]
fn replies_are_counted_on_the_interface_element() {
    let lab = Lab::new(BrNetfilter::On);
    let listener = lab.run_in("ns1", || {
        std::net::TcpListener::bind(("0.0.0.0", 3000)).unwrap()
    });
    let server = std::thread::spawn(move || {
        if let Some(mut stream) = listener.incoming().flatten().next() {
            let _ = std::io::Write::write_all(&mut stream, &vec![7u8; 200_000]);
        }
    });
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "--on", "vo", "3000"]);
    let got = lab.run_in("out", || {
        let mut stream = std::net::TcpStream::connect((HOST_OUT, 3000)).unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut data).unwrap();
        data.len()
    });
    server.join().unwrap();
    assert_eq!(got, 200_000);
    let rows = json_rows(&lab);
    let bytes = rows[0]["bytes"].as_u64().unwrap();
    assert!((200_000..240_000).contains(&bytes), "{rows:?}");
    assert!(rows[0]["packets"].as_u64().unwrap() >= 8, "{rows:?}");
}

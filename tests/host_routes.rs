//! What a publish asks the host's routes: whether the target is the host itself or the
//! broadcast address of one of its networks, and whether a host address is one of the
//! host's; refused with the same messages and exit codes the address dump gave, and
//! accepted where the dump accepted.

mod lab;

use lab::{BrNetfilter, HOST_OUT2, Lab, OUT};

/// Runs nsport expecting exit `code` with one stderr line naming `what`, and nothing
/// changed in the kernel.
fn refused(lab: &Lab, args: &[&str], code: i32, what: &str) {
    let before = lab.nft("host", "list ruleset");
    let output = lab.nsport(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.contains(what), "{args:?}: {stderr}");
    assert_eq!(
        lab.nft("host", "list ruleset"),
        before,
        "{args:?} changed it"
    );
}

#[test]
fn the_host_itself_and_its_broadcast_addresses_are_no_targets() {
    let lab = Lab::new(BrNetfilter::Off);
    // The host's addresses, a secondary one included.
    for own in ["172.18.0.1", "10.77.0.1", "198.51.100.1"] {
        let what = format!("target {own} is an address of this host");
        refused(&lab, &["add", "--to", own, "8080:80"], 2, &what);
    }
    // The broadcast addresses of the host's networks, with or without an interface given:
    // of a /30, and one set apart from the network's last address with `brd`.
    lab.ip("host", "addr add 10.55.0.1/24 brd 10.55.0.128 dev vo");
    for broadcast in ["10.77.0.3", "172.18.0.255", "10.55.0.128", "10.55.0.255"] {
        let what = format!("target {broadcast} is the broadcast address of a network");
        refused(&lab, &["add", "--to", broadcast, "8080:80"], 2, &what);
        refused(
            &lab,
            &["add", "--to", broadcast, "--via", "vo", "8080:80"],
            2,
            &what,
        );
    }
    // A target the kernel refuses to route to has no route, which is what the user is
    // told (not that nsport needs root, as EACCES from a prohibit route read before);
    // through a given interface it is published, as before, with no route asked for.
    lab.ip("host", "route add prohibit 10.123.0.0/16");
    let what = "no route to target 10.123.0.5: give the interface with --via";
    refused(&lab, &["add", "--to", "10.123.0.5", "8082:80"], 1, what);
    lab.nsport_ok(&["add", "--to", "10.123.0.5", "--via", "v3", "8082:80"]);
    // An address on one of the host's networks is a target.
    lab.nsport_ok(&["add", "--to", "10.77.0.2", "8083:80"]);
    let listing = lab.nsport_ok(&["ls"]);
    assert!(
        listing.contains("10.123.0.5") && listing.contains("10.77.0.2"),
        "{listing}"
    );
}

/// The kernel keeps a broadcast route only for a network whose link is up: the broadcast
/// address of a network on a link that is down is refused all the same, through that link
/// with `--via` and without (where a default route would carry it), and published nowhere.
#[test]
fn the_broadcast_address_of_a_network_on_a_link_that_is_down_is_no_target() {
    let lab = Lab::new(BrNetfilter::Off);
    lab.ip("host", "link add dn type veth peer name dnp");
    lab.ip("host", "addr add 10.56.0.1/24 dev dn");
    lab.ip("host", "route add default via 192.0.2.2");
    let route = lab.ip_output("host", "route get 10.56.0.255");
    assert!(!route.contains("broadcast"), "{route}");
    let what = "target 10.56.0.255 is the broadcast address of a network";
    refused(&lab, &["add", "--to", "10.56.0.255", "8080:80"], 2, what);
    refused(
        &lab,
        &["add", "--to", "10.56.0.255", "--via", "dn", "8080:80"],
        2,
        what,
    );
    // Another address of that network is a target through the link.
    lab.nsport_ok(&["add", "--to", "10.56.0.7", "--via", "dn", "8080:80"]);
}

#[test]
fn host_addresses_must_be_the_hosts() {
    let lab = Lab::dual_stack(BrNetfilter::Off);
    let _server = lab.serve_tcp("ns3", std::net::Ipv6Addr::UNSPECIFIED, 80);
    refused(
        &lab,
        &["add", "--to", "10.77.0.2", "172.18.0.9:8080:80"],
        2,
        "host address 172.18.0.9 is not an address of this host",
    );
    // The first of several that is not the host's is named.
    refused(
        &lab,
        &[
            "add",
            "--to",
            "10.77.0.2",
            "192.0.2.1:8080:80",
            "192.0.2.77:8081:80",
            "192.0.2.9:8082:80",
        ],
        2,
        "host address 192.0.2.9 is not an address of this host",
    );
    refused(
        &lab,
        &["add", "--to", "2001:db8:3::2", "[2001:db8:3::9]:8080:80"],
        2,
        "host address 2001:db8:3::9 is not an address of this host",
    );
    // A secondary address is the host's, and traffic to it reaches the target.
    lab.nsport_ok(&["add", "--to", "10.77.0.2", &format!("{HOST_OUT2}:8080:80")]);
    // The server listens on both families, so it sees an IPv4 client as ::ffff:A.B.C.D.
    let client = lab.tcp("out", HOST_OUT2, 8080).unwrap_or_default();
    assert!(client.ends_with(&OUT.to_string()), "{client}");
    // An IPv4 address on an interface that is down is still the host's to the kernel.
    lab.ip("host", "link add vd0 type veth peer name vd1");
    lab.ip("host", "addr add 10.66.0.1/24 dev vd0");
    lab.nsport_ok(&["add", "--to", "10.77.0.2", "10.66.0.1:8081:80"]);
    // An IPv6 one is tentative until the link is up, and no route says it is the host's;
    // the address dump still does, as it always did.
    // (The lab turns duplicate address detection off; vd0 has it back.)
    lab.write_sysctl("host", "net/ipv6/conf/vd0/accept_dad", "1");
    lab.ip("host", "addr add 2001:db8:66::1/64 dev vd0");
    assert!(
        lab.ip_output("host", "addr show dev vd0")
            .contains("tentative")
    );
    lab.nsport_ok(&["add", "--to", "2001:db8:3::2", "[2001:db8:66::1]:8082:80"]);
    let listing = lab.nsport_ok(&["ls"]);
    assert!(listing.contains("10.66.0.1:8081"), "{listing}");
    assert!(listing.contains("[2001:db8:66::1]:8082"), "{listing}");
}

//! Forwarding that nsport turns on opens nothing but the published ports, goes back when
//! the last mapping of its family does, keeps router advertisements coming, and trust is
//! per target: a host behind the outside interface, or a namespace on another network,
//! gains nothing from another target's publish. Each protection is also checked by taking
//! it away and seeing the traffic through.

mod lab;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use lab::{BrNetfilter, HOST_BR, HOST_OUT, Lab, NS1, NS2, NS3, OUT, some};

const FORWARD4: &str = "net/ipv4/ip_forward";
const FORWARD6: &str = "net/ipv6/conf/all/forwarding";

/// The outside neighbour routes the namespaces' networks through the host, as a host on
/// the same network as the host's outside interface could.
fn route_inside_from_out(lab: &Lab) {
    lab.ip("out", "route add 172.18.0.0/24 via 192.0.2.1");
    lab.ip("out", "route add 10.77.0.0/30 via 192.0.2.1");
}

#[test]
fn never_published_namespaces_stay_closed_when_nsport_turned_forwarding_on() {
    let lab = Lab::new(BrNetfilter::Off);
    let _published = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    let _never2 = lab.serve_tcp("ns2", Ipv4Addr::UNSPECIFIED, 2222);
    let _never3 = lab.serve_tcp("ns3", Ipv4Addr::UNSPECIFIED, 2222);
    let _outside = lab.serve_tcp("out", Ipv4Addr::UNSPECIFIED, 8000);
    route_inside_from_out(&lab);
    assert_eq!(lab.read_sysctl("host", FORWARD4), "0");
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    assert_eq!(lab.read_sysctl("host", FORWARD4), "1");
    // The published port works, with the client's address kept.
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), some(OUT));
    // Namespaces nobody published stay out of reach, on the published one's bridge (ns2)
    // and on a network of their own (ns3).
    assert_eq!(lab.tcp("out", NS2, 2222), None);
    assert_eq!(lab.tcp("out", NS3, 2222), None);
    // The published namespace's network still gets out, and its neighbour too.
    assert_eq!(lab.tcp("ns1", OUT, 8000), some(NS1));
    assert_eq!(lab.tcp("ns2", OUT, 8000), some(NS2));
    // Control: without the closing, forwarding nsport turned on lets the outside in.
    lab.nft("host", "delete element inet nsport closed { ipv4 }");
    assert_eq!(lab.tcp("out", NS2, 2222), some(OUT));
    assert_eq!(lab.tcp("out", NS3, 2222), some(OUT));
}

#[test]
fn forwarding_goes_back_with_the_last_mapping_of_its_family() {
    let lab = Lab::new(BrNetfilter::Off);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000", "3001"]);
    assert_eq!(lab.read_sysctl("host", FORWARD4), "1");
    lab.nsport_ok(&["rm", "3000"]);
    assert_eq!(lab.read_sysctl("host", FORWARD4), "1");
    lab.nsport_ok(&["rm", "3001"]);
    assert_eq!(lab.read_sysctl("host", FORWARD4), "0");
    let table = lab.nft("host", "list set inet nsport closed");
    assert!(!table.contains("ipv4"), "{table}");
    // Again, through flush.
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    assert_eq!(lab.read_sysctl("host", FORWARD4), "1");
    lab.nsport_ok(&["flush"]);
    assert_eq!(lab.read_sysctl("host", FORWARD4), "0");
}

#[test]
fn forwarding_that_was_on_before_stays_on_and_closes_nothing() {
    let lab = Lab::new(BrNetfilter::Off);
    let _never2 = lab.serve_tcp("ns2", Ipv4Addr::UNSPECIFIED, 2222);
    route_inside_from_out(&lab);
    // A host that routes to its namespaces on purpose.
    lab.write_sysctl("host", FORWARD4, "1");
    assert_eq!(lab.tcp("out", NS2, 2222), some(OUT));
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    assert_eq!(lab.tcp("out", NS2, 2222), some(OUT));
    lab.nsport_ok(&["flush"]);
    assert_eq!(lab.read_sysctl("host", FORWARD4), "1");
    assert_eq!(lab.tcp("out", NS2, 2222), some(OUT));
}

#[test]
fn forwarding_to_a_host_outside_opens_and_masquerades_nothing_else() {
    let lab = Lab::new(BrNetfilter::Off);
    let _published = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    let _private = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 2222);
    let _outside = lab.serve_tcp("out", Ipv4Addr::UNSPECIFIED, 8000);
    route_inside_from_out(&lab);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    // Plain port forwarding to a host behind the outside interface.
    lab.nsport_ok(&["add", "--to", &OUT.to_string(), "8888:8000"]);
    // It works from the namespaces, through the host's address on their bridge ...
    assert!(lab.tcp("ns1", HOST_BR, 8888).is_some());
    // ... and the namespaces still reach that host directly.
    assert_eq!(lab.tcp("ns1", OUT, 8000), some(NS1));
    // It made the outside interface trusted for nothing: outside clients of the other
    // published port keep their addresses, and unpublished ports stay closed.
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), some(OUT));
    assert_eq!(lab.tcp("out", NS1, 2222), None);
    assert_eq!(lab.tcp("out", NS2, 2222), None);
}

#[test]
fn namespaces_on_separate_networks_gain_nothing_from_each_others_publish() {
    let lab = Lab::new(BrNetfilter::Off);
    let _private1 = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 2222);
    let _private3 = lab.serve_tcp("ns3", Ipv4Addr::UNSPECIFIED, 2222);
    let _published3 = lab.serve_tcp("ns3", Ipv4Addr::UNSPECIFIED, 3000);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns3"), "3003:3000"]);
    // Each reaches the other's published port through the host ...
    assert_eq!(lab.tcp("ns1", HOST_BR, 3003), some(NS1));
    // ... and neither the other's unpublished one.
    assert_eq!(lab.tcp("ns1", NS3, 2222), None);
    assert_eq!(lab.tcp("ns3", NS1, 2222), None);
    // Control: the protection of ns3 is what keeps ns1 out.
    lab.nft(
        "host",
        &format!("delete element inet nsport targets4 {{ {NS3} }}"),
    );
    assert_eq!(lab.tcp("ns1", NS3, 2222), some(NS1));
}

/// Sends one router advertisement (lifetime 1800 s) from `role`'s eth0 to all nodes.
fn send_router_advertisement(lab: &Lab, role: &str) {
    lab.run_in(role, || {
        // SAFETY: plain socket calls on a descriptor this closure owns and closes.
        unsafe {
            let fd = libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6);
            assert!(fd >= 0, "raw ICMPv6 socket");
            let hops: libc::c_int = 255;
            let set = libc::setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_MULTICAST_HOPS,
                (&hops as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            assert_eq!(set, 0);
            // Type 134, code 0, checksum (the kernel's), hop limit 64, no flags, router
            // lifetime 1800, reachable time and retransmit timer 0.
            let mut ra = [0u8; 16];
            ra[0] = 134;
            ra[4] = 64;
            ra[6..8].copy_from_slice(&1800u16.to_be_bytes());
            let mut to: libc::sockaddr_in6 = std::mem::zeroed();
            to.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            to.sin6_addr.s6_addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
            to.sin6_scope_id = libc::if_nametoindex(c"eth0".as_ptr());
            let sent = libc::sendto(
                fd,
                ra.as_ptr().cast(),
                ra.len(),
                0,
                (&to as *const libc::sockaddr_in6).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            );
            assert_eq!(
                sent,
                ra.len() as isize,
                "{}",
                std::io::Error::last_os_error()
            );
            libc::close(fd);
        }
    });
}

/// Whether the host has a default route learnt from a router advertisement on vo, asked
/// a bounded number of times while the advertisement is processed.
fn host_learnt_default_route(lab: &Lab) -> bool {
    (0..20).any(|_| {
        let routes = lab.ip_output("host", "-6 route show default");
        if routes.contains("proto ra") && routes.contains("dev vo") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    })
}

#[test]
fn ipv6_forwarding_keeps_router_advertisements_coming() {
    let lab = Lab::dual_stack(BrNetfilter::Off);
    let accept_ra = "net/ipv6/conf/vo/accept_ra";
    assert_eq!(lab.read_sysctl("host", accept_ra), "1");
    assert_eq!(lab.read_sysctl("host", FORWARD6), "0");
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    assert_eq!(lab.read_sysctl("host", FORWARD6), "1");
    assert_eq!(lab.read_sysctl("host", accept_ra), "2");
    send_router_advertisement(&lab, "out");
    assert!(
        host_learnt_default_route(&lab),
        "the advertisement was ignored"
    );
    // Control: with accept_ra 1, forwarding makes the host ignore advertisements.
    lab.ip("host", "-6 route flush proto ra");
    lab.write_sysctl("host", accept_ra, "1");
    send_router_advertisement(&lab, "out");
    assert!(!host_learnt_default_route(&lab));
    // flush puts both back as nsport found them.
    lab.write_sysctl("host", accept_ra, "2");
    lab.nsport_ok(&["flush"]);
    assert_eq!(lab.read_sysctl("host", FORWARD6), "0");
    assert_eq!(lab.read_sysctl("host", accept_ra), "1");
}

//! Kernel checks of the rtnetlink layer (`nsport::netlink::rtnetlink`) and of the namespace
//! cookie, as root, each in a fresh network namespace of the test thread's own, with `ip`
//! building what is read and reading back what is written. Without root they are
//! skipped, except under CI.

use std::net::IpAddr;
use std::process::Command;

use nsport::netlink::rtnetlink::{self, RTN_BROADCAST, RTN_LOCAL, RTN_UNICAST};
use nsport::netlink::{NetlinkError, netns_cookie};

mod fresh_netns;
use fresh_netns::in_fresh_netns;

/// Runs `ip` in the calling thread's namespace, which its child process inherits.
fn ip(args: &str) -> String {
    let output = Command::new("ip")
        .args(args.split(' '))
        .output()
        .expect("run ip");
    assert!(
        output.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn addr(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// The index `ip` gives a link.
fn index_of(name: &str) -> u32 {
    let shown = ip(&format!("-o link show dev {name}"));
    shown.split(':').next().unwrap().trim().parse().unwrap()
}

/// A bridge with a veth port in hairpin mode, the veth's peer outside it, addresses of
/// both families, and a point-to-point address whose peer is another host.
fn build_links() {
    ip("link set lo up");
    ip("link add br0 type bridge");
    ip("link add va type veth peer name vb");
    ip("link set va master br0");
    ip("link set va type bridge_slave hairpin on");
    ip("addr add 10.77.0.1/24 dev br0");
    ip("addr add fd00:77::1/64 dev br0 nodad");
    ip("addr add 10.9.0.1 peer 10.9.0.2 dev vb");
    for link in ["br0", "va", "vb"] {
        ip(&format!("link set {link} up"));
    }
}

#[test]
fn links_and_addresses_read_as_ip_shows_them() {
    in_fresh_netns(|| {
        build_links();
        let (br0, va, vb) = (index_of("br0"), index_of("va"), index_of("vb"));
        let links = rtnetlink::links().unwrap();
        let names: Vec<&str> = links.iter().map(|link| link.name.as_str()).collect();
        // Every link, in the kernel's order, which is `ip`'s.
        let shown: Vec<String> = ip("-o link show")
            .lines()
            .map(|line| {
                line.split(':')
                    .nth(1)
                    .unwrap()
                    .trim()
                    .split('@')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(names, shown);
        assert_eq!(names.len(), 4);
        let by_name = |name: &str| links.iter().find(|link| link.name == name).unwrap();
        assert!(by_name("lo").is_loopback && !by_name("br0").is_loopback);
        assert!(by_name("br0").is_bridge && !by_name("va").is_bridge);
        let port = by_name("va");
        assert_eq!(
            (port.index, port.master, port.peer, port.hairpin),
            (va, Some(br0), Some(vb), Some(true))
        );
        assert_eq!((by_name("vb").master, by_name("vb").hairpin), (None, None));
        assert_eq!(by_name("vb").peer, Some(va));

        // One link by index or by name reads the same as in the dump.
        assert_eq!(rtnetlink::link_by_index(va).unwrap().as_ref(), Some(port));
        assert_eq!(rtnetlink::link_by_name("va").unwrap().as_ref(), Some(port));
        assert_eq!(rtnetlink::link_by_index(99_999).unwrap(), None);
        assert_eq!(rtnetlink::link_by_name("nothere").unwrap(), None);
        assert_eq!(rtnetlink::link_by_name("sixteen-bytes-xx").unwrap(), None);
        assert_eq!(rtnetlink::link_by_name("").unwrap(), None);
        // An alternative name finds the link in the kernel, but is not its name.
        ip("link property add dev va altname va-alt");
        assert_eq!(rtnetlink::link_by_name("va-alt").unwrap(), None);
        assert_eq!(rtnetlink::link_by_name("va").unwrap().unwrap().index, va);

        let addresses = rtnetlink::addresses().unwrap();
        let find = |text: &str| addresses.iter().find(|a| a.addr == addr(text)).cloned();
        let v4 = find("10.77.0.1").expect("the bridge's address");
        assert_eq!((v4.prefix_len, v4.ifindex, v4.global), (24, br0, true));
        let v6 = find("fd00:77::1").expect("the bridge's IPv6 address");
        assert_eq!((v6.prefix_len, v6.ifindex, v6.global), (64, br0, true));
        // A point-to-point address is this host's, not its peer's.
        assert_eq!(find("10.9.0.1").map(|a| a.ifindex), Some(vb));
        assert_eq!(find("10.9.0.2"), None);
        let lo = find("127.0.0.1").expect("the loopback address");
        assert!(!lo.global);
        // As many as `ip` shows, link-local ones included.
        let shown = ip("-o addr show").lines().count();
        assert_eq!(addresses.len(), shown);
        // The IPv4 ones alone are those of the whole dump, in its order.
        let v4: Vec<_> = addresses
            .iter()
            .filter(|a| a.addr.is_ipv4())
            .cloned()
            .collect();
        assert_eq!(rtnetlink::ipv4_addresses().unwrap(), v4);
        assert_eq!(v4.len(), ip("-o -4 addr show").lines().count());
    });
}

#[test]
fn route_lookups_say_what_kind_of_address_they_reach() {
    in_fresh_netns(|| {
        build_links();
        let br0 = index_of("br0");
        let route = |text: &str| rtnetlink::route_to(addr(text)).unwrap();
        let kind = |text: &str| route(text).map(|route| route.kind);
        assert_eq!(kind("10.77.0.1"), Some(RTN_LOCAL));
        assert_eq!(kind("10.9.0.1"), Some(RTN_LOCAL));
        assert_eq!(kind("127.0.0.9"), Some(RTN_LOCAL));
        assert_eq!(kind("fd00:77::1"), Some(RTN_LOCAL));
        assert_eq!(kind("10.77.0.255"), Some(RTN_BROADCAST));
        let unicast = route("10.77.0.9").unwrap();
        assert_eq!((unicast.kind, unicast.oif), (RTN_UNICAST, Some(br0)));
        assert_eq!(kind("fd00:77::9"), Some(RTN_UNICAST));
        assert_eq!(
            rtnetlink::route_output_interface(addr("10.77.0.9")).unwrap(),
            Some(br0)
        );
        // No route at all is none, and so is a route that refuses the packet.
        assert_eq!(route("10.200.0.1"), None);
        assert_eq!(route("fd00:200::1"), None);
        ip("route add prohibit 10.201.0.0/16");
        ip("route add blackhole 10.202.0.0/16");
        ip("route add unreachable 10.203.0.0/16");
        for refusing in ["10.201.0.1", "10.202.0.1", "10.203.0.1"] {
            assert_eq!(route(refusing), None, "{refusing}");
        }
    });
}

#[test]
fn hairpin_mode_is_set_as_ip_reads_it() {
    in_fresh_netns(|| {
        build_links();
        let va = index_of("va");
        rtnetlink::set_hairpin(va, false).unwrap();
        assert!(ip("-d link show dev va").contains("hairpin off"));
        assert_eq!(
            rtnetlink::link_by_index(va).unwrap().unwrap().hairpin,
            Some(false)
        );
        rtnetlink::set_hairpin(va, true).unwrap();
        assert!(ip("-d link show dev va").contains("hairpin on"));
        // A link that is no bridge port is refused by the kernel, not taken for one.
        assert!(matches!(
            rtnetlink::set_hairpin(index_of("vb"), true),
            Err(NetlinkError::Kernel { .. })
        ));
        assert!(matches!(
            rtnetlink::set_hairpin(99_999, true),
            Err(NetlinkError::Kernel { .. })
        ));
    });
}

/// The cookie names the namespace the calling thread is in when it asks: asked twice in
/// one namespace it is the same, and a thread that moved is answered for where it is.
#[test]
fn the_namespace_cookie_follows_the_thread() {
    in_fresh_netns(|| {
        let first = netns_cookie().unwrap();
        assert_eq!(netns_cookie().unwrap(), first);
        let back = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare again");
        let second = netns_cookie().unwrap();
        assert_ne!(second, first, "the cookie of the namespace left behind");
        nix::sched::setns(&back, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns back");
        assert_eq!(netns_cookie().unwrap(), first);
    });
}

/// A link whose name is not UTF-8 (Linux takes any bytes but `/`, `:` and whitespace) is
/// read with the bytes that are not replaced, instead of failing the whole read: a target
/// namespace holding one could not be published to before.
#[test]
fn a_link_name_that_is_not_utf8_does_not_fail_the_read() {
    in_fresh_netns(|| {
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"q\xff");
        let status = Command::new("ip")
            .args(["link", "add"])
            .arg(odd)
            .args(["type", "veth", "peer", "name", "qq"])
            .status()
            .expect("run ip");
        assert!(status.success());
        let links = rtnetlink::links().unwrap();
        let mut names: Vec<&str> = links.iter().map(|link| link.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["lo", "qq", "q\u{fffd}"]);
        // Such a name matches no name a user can give, which nsport checks to be ASCII.
        assert_eq!(rtnetlink::link_by_name("q\u{fffd}").unwrap(), None);
    });
}

#[test]
fn listening_sockets_of_both_families_are_read_in_one_dump() {
    in_fresh_netns(|| {
        ip("link set lo up");
        let v4 = std::net::TcpListener::bind("127.0.0.1:4001").unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:4002").unwrap();
        let any = std::net::TcpListener::bind("[::]:4003").unwrap();
        // Neither a UDP socket nor a TCP connection is a listener.
        let _udp = std::net::UdpSocket::bind("127.0.0.1:4004").unwrap();
        let _client = std::net::TcpStream::connect("127.0.0.1:4001").unwrap();
        let mut found: Vec<(IpAddr, u16)> =
            nsport::netlink::sock_diag::bound_sockets(nsport::Proto::Tcp)
                .unwrap()
                .into_iter()
                .map(|socket| (socket.addr, socket.port))
                .collect();
        found.sort();
        let mut wanted: Vec<(IpAddr, u16)> = [&v4, &v6, &any]
            .iter()
            .map(|l| {
                let at = l.local_addr().unwrap();
                (at.ip(), at.port())
            })
            .collect();
        wanted.sort();
        assert_eq!(found, wanted);
    });
}

//! SCTP publishing with real SCTP packets. This kernel tracks and NATs SCTP but has no SCTP
//! sockets (CONFIG_IP_SCTP is off), so the tests speak SCTP over raw IP sockets: a client
//! sends an INIT chunk, a raw socket in the target namespace reads what arrives there (it
//! also keeps that kernel from answering "protocol unreachable"), answers with an INIT-ACK,
//! and the client reads what comes back. Conntrack checks the CRC32c of packets that
//! arrive without a checksum offload, so every packet carries a correct one.

mod lab;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lab::*;
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6,
    SockaddrStorage, recvfrom, sendto, setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;
use serde_json::{Value, json};

/// How long a reader waits for the packet it expects; a dropped packet costs this much.
const PATIENCE: Duration = Duration::from_millis(800);
const CHUNK_DATA: u8 = 0;
const CHUNK_INIT: u8 = 1;
const CHUNK_INIT_ACK: u8 = 2;
const CHUNK_COOKIE_ECHO: u8 = 10;
const CHUNK_HEARTBEAT: u8 = 4;
const CHUNK_COOKIE_ACK: u8 = 11;
/// conntrack's `SCTP_CONNTRACK_ESTABLISHED`.
const SCTP_ESTABLISHED: u8 = 4;
const PUBLISHED: u16 = 3868;
const TARGET_PORT: u16 = 9899;

/// CRC32c (Castagnoli), the checksum of RFC 9260 appendix A, bit by bit.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An SCTP packet: the common header, then one chunk. The checksum is computed with its
/// own field zero and stored least significant byte first, as Linux stores it.
fn sctp_packet(sport: u16, dport: u16, vtag: u32, chunk: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(12 + chunk.len());
    packet.extend_from_slice(&sport.to_be_bytes());
    packet.extend_from_slice(&dport.to_be_bytes());
    packet.extend_from_slice(&vtag.to_be_bytes());
    packet.extend_from_slice(&[0; 4]);
    packet.extend_from_slice(chunk);
    let sum = crc32c(&packet);
    packet[8..12].copy_from_slice(&sum.to_le_bytes());
    packet
}

/// An INIT or INIT-ACK chunk with `tag` as its initiate tag (and initial TSN). An INIT-ACK
/// carries the State Cookie parameter it must have.
fn init_chunk(kind: u8, tag: u32) -> Vec<u8> {
    let mut chunk = vec![kind, 0, 0, 0];
    chunk.extend_from_slice(&tag.to_be_bytes());
    chunk.extend_from_slice(&65536u32.to_be_bytes()); // advertised receiver window
    chunk.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    chunk.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    chunk.extend_from_slice(&tag.to_be_bytes()); // initial TSN
    if kind == CHUNK_INIT_ACK {
        chunk.extend_from_slice(&[0, 7, 0, 8, 0xc0, 0x0c, 0x1e, 0x00]);
    }
    let len = chunk.len() as u16;
    chunk[2..4].copy_from_slice(&len.to_be_bytes());
    chunk
}

/// An SCTP packet as a raw socket read it, with the addresses it travelled between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    vtag: u32,
    chunk: u8,
    initiate_tag: u32,
    checksum_ok: bool,
}

impl Seen {
    fn parse(src: IpAddr, dst: IpAddr, sctp: &[u8]) -> Option<Seen> {
        // The common header and at least a chunk header.
        if sctp.len() < 16 {
            return None;
        }
        let mut zeroed = sctp.to_vec();
        zeroed[8..12].fill(0);
        Some(Seen {
            src,
            dst,
            sport: u16::from_be_bytes([sctp[0], sctp[1]]),
            dport: u16::from_be_bytes([sctp[2], sctp[3]]),
            vtag: u32::from_be_bytes(sctp[4..8].try_into().unwrap()),
            chunk: sctp[12],
            initiate_tag: sctp
                .get(16..20)
                .map_or(0, |tag| u32::from_be_bytes(tag.try_into().unwrap())),
            checksum_ok: crc32c(&zeroed).to_le_bytes() == sctp[8..12],
        })
    }
}

/// A raw SCTP socket of one namespace: it reads every SCTP packet that namespace receives.
struct Raw {
    fd: OwnedFd,
    v6: bool,
}

impl Raw {
    fn open(lab: &Lab, role: &str, v6: bool) -> Raw {
        let family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let fd = lab.run_in(role, || {
            socket(family, SockType::Raw, SockFlag::empty(), SockProtocol::Sctp)
                .expect("a raw SCTP socket")
        });
        if v6 {
            // An IPv6 raw socket reads no IP header: the destination comes with the packet.
            setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true).unwrap();
        }
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 50_000)).unwrap();
        Raw { fd, v6 }
    }

    fn send(&self, to: IpAddr, packet: &[u8]) {
        let fd = self.fd.as_raw_fd();
        match to {
            IpAddr::V4(v4) => sendto(
                fd,
                packet,
                &SockaddrIn::from(SocketAddrV4::new(v4, 0)),
                MsgFlags::empty(),
            ),
            IpAddr::V6(v6) => sendto(
                fd,
                packet,
                &SockaddrIn6::from(SocketAddrV6::new(v6, 0, 0, 0)),
                MsgFlags::empty(),
            ),
        }
        .expect("send an SCTP packet");
    }

    /// The first packet that `wanted` accepts, or `None` when none came in time.
    fn receive(&self, wanted: impl Fn(&Seen) -> bool) -> Option<Seen> {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Some(seen) = self.read_one()
                && wanted(&seen)
            {
                return Some(seen);
            }
        }
        None
    }

    fn read_one(&self) -> Option<Seen> {
        let mut buf = [0u8; 2048];
        if !self.v6 {
            let (len, _) = recvfrom::<SockaddrIn>(self.fd.as_raw_fd(), &mut buf).ok()?;
            let packet = &buf[..len];
            let header = usize::from(packet.first()? & 0x0f) * 4;
            let addr = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&packet[at..at + 4]).unwrap());
            return Seen::parse(addr(12), addr(16), packet.get(header..)?);
        }
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!(nix::libc::in6_pktinfo);
        let message = nix::sys::socket::recvmsg::<SockaddrStorage>(
            self.fd.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .ok()?;
        let src = IpAddr::V6(message.address?.as_sockaddr_in6()?.ip());
        let dst = message.cmsgs().ok()?.find_map(|cmsg| match cmsg {
            nix::sys::socket::ControlMessageOwned::Ipv6PacketInfo(info) => {
                Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)))
            }
            _ => None,
        })?;
        let len = message.bytes;
        Seen::parse(src, dst, &buf[..len])
    }
}

/// Tags and client ports unique to each exchange, so that no reader takes another's packet.
fn fresh_tag() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    (std::process::id() << 12)
        ^ NEXT
            .fetch_add(1, Ordering::SeqCst)
            .wrapping_mul(0x9E37_79B1)
}

/// What one INIT / INIT-ACK exchange showed: the INIT as the target read it, and the
/// INIT-ACK as the client read it, if either arrived.
#[derive(Debug)]
struct Exchange {
    at_target: Option<Seen>,
    reply: Option<Seen>,
}

/// Sends an INIT from `client` (source port `sport`) to `addr`:`port` and, if it arrives in
/// `target`, answers it there with an INIT-ACK to where it came from.
fn exchange(
    lab: &Lab,
    client: &str,
    sport: u16,
    addr: IpAddr,
    port: u16,
    target: &str,
) -> Exchange {
    let v6 = addr.is_ipv6();
    let server = Raw::open(lab, target, v6);
    let client = Raw::open(lab, client, v6);
    let tag = fresh_tag();
    client.send(
        addr,
        &sctp_packet(sport, port, 0, &init_chunk(CHUNK_INIT, tag)),
    );
    let at_target = server.receive(|p| p.chunk == CHUNK_INIT && p.initiate_tag == tag);
    let reply = at_target.and_then(|init| {
        let answer_tag = tag ^ 0x5A5A_5A5A;
        let ack = init_chunk(CHUNK_INIT_ACK, answer_tag);
        server.send(init.src, &sctp_packet(init.dport, init.sport, tag, &ack));
        client.receive(|p| p.chunk == CHUNK_INIT_ACK && p.initiate_tag == answer_tag)
    });
    Exchange { at_target, reply }
}

/// A whole association, INIT to COOKIE-ACK, between raw sockets in `client` and in
/// `server` (the namespace the INIT arrives in); its DATA chunks can then be followed.
struct Association {
    client: Raw,
    server: Raw,
    /// Where the client sends: the published address and port, and its own port.
    addr: IpAddr,
    port: u16,
    sport: u16,
    /// Where the server answers: the source and port its INIT came from.
    peer: IpAddr,
    peer_port: u16,
    /// The port the server's INIT arrived at.
    server_port: u16,
    /// The verification tags each side puts on what it sends.
    to_server: u32,
    to_client: u32,
}

impl Association {
    fn establish(
        lab: &Lab,
        client: &str,
        sport: u16,
        addr: IpAddr,
        port: u16,
        server: &str,
    ) -> Association {
        let v6 = addr.is_ipv6();
        let server = Raw::open(lab, server, v6);
        let client = Raw::open(lab, client, v6);
        let (client_tag, server_tag) = (fresh_tag(), fresh_tag());
        client.send(
            addr,
            &sctp_packet(sport, port, 0, &init_chunk(CHUNK_INIT, client_tag)),
        );
        let init = server
            .receive(|p| p.chunk == CHUNK_INIT && p.initiate_tag == client_tag)
            .expect("the INIT arrived");
        let ack = init_chunk(CHUNK_INIT_ACK, server_tag);
        server.send(
            init.src,
            &sctp_packet(init.dport, init.sport, client_tag, &ack),
        );
        client
            .receive(|p| p.chunk == CHUNK_INIT_ACK && p.initiate_tag == server_tag)
            .expect("the INIT-ACK came back");
        // COOKIE-ECHO with the cookie the INIT-ACK carried, and COOKIE-ACK.
        let echo = [CHUNK_COOKIE_ECHO, 0, 0, 8, 0xc0, 0x0c, 0x1e, 0x00];
        client.send(addr, &sctp_packet(sport, port, server_tag, &echo));
        server
            .receive(|p| p.chunk == CHUNK_COOKIE_ECHO && p.vtag == server_tag)
            .expect("the COOKIE-ECHO arrived");
        let cookie_ack = [CHUNK_COOKIE_ACK, 0, 0, 4];
        server.send(
            init.src,
            &sctp_packet(init.dport, init.sport, client_tag, &cookie_ack),
        );
        client
            .receive(|p| p.chunk == CHUNK_COOKIE_ACK && p.vtag == client_tag)
            .expect("the COOKIE-ACK came back");
        Association {
            client,
            server,
            addr,
            port,
            sport,
            peer: init.src,
            peer_port: init.sport,
            server_port: init.dport,
            to_server: server_tag,
            to_client: client_tag,
        }
    }

    /// Sends a DATA chunk from the client; whether the server read it.
    fn data_arrives(&self) -> bool {
        let tsn = fresh_tag();
        self.client.send(
            self.addr,
            &sctp_packet(self.sport, self.port, self.to_server, &data_chunk(tsn)),
        );
        self.server
            .receive(|p| p.chunk == CHUNK_DATA && p.vtag == self.to_server && p.initiate_tag == tsn)
            .is_some()
    }

    /// Sends a HEARTBEAT from the client; whether the server read it. Conntrack starts a
    /// new entry for a HEARTBEAT it has no entry for, so this is the chunk that would move
    /// an association whose entry was deleted.
    fn heartbeat_arrives(&self) -> bool {
        // One Heartbeat Info parameter; the association's tag tells its packets apart.
        let mut chunk = vec![CHUNK_HEARTBEAT, 0, 0, 12, 0, 1, 0, 8];
        chunk.extend_from_slice(&fresh_tag().to_be_bytes());
        let packet = sctp_packet(self.sport, self.port, self.to_server, &chunk);
        self.client.send(self.addr, &packet);
        self.server
            .receive(|p| p.chunk == CHUNK_HEARTBEAT && p.vtag == self.to_server)
            .is_some()
    }

    /// Sends a DATA chunk from the server; whether the client read it.
    fn reply_arrives(&self) -> bool {
        let tsn = fresh_tag();
        self.server.send(
            self.peer,
            &sctp_packet(
                self.server_port,
                self.peer_port,
                self.to_client,
                &data_chunk(tsn),
            ),
        );
        self.client
            .receive(|p| p.chunk == CHUNK_DATA && p.vtag == self.to_client && p.initiate_tag == tsn)
            .is_some()
    }
}

/// A DATA chunk of one unordered fragment: `tsn` (which Seen reads as `initiate_tag`).
fn data_chunk(tsn: u32) -> Vec<u8> {
    let mut chunk = vec![CHUNK_DATA, 0x07, 0, 20];
    chunk.extend_from_slice(&tsn.to_be_bytes());
    chunk.extend_from_slice(&[0, 0, 0, 0]); // stream 0, sequence 0
    chunk.extend_from_slice(&[0, 0, 0, 0]); // payload protocol
    chunk.extend_from_slice(b"ping");
    chunk
}

/// Asserts that an exchange through `addr`:`PUBLISHED` reaches ns1's `to` address on
/// TARGET_PORT from `from`, and that the reply comes back as if from `addr`:`PUBLISHED`.
fn assert_translated(lab: &Lab, client: &str, addr: IpAddr, from: Option<IpAddr>, to: IpAddr) {
    let sport = 40000 + (fresh_tag() % 20000) as u16;
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

//! SCTP spoken over raw IP sockets, for a kernel with SCTP conntrack and NAT but no SCTP
//! sockets: packets with a correct CRC32c (conntrack checks it), the chunks of an
//! association's setup, and readers that pick their packet out of everything a namespace
//! receives.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6,
    SockaddrStorage, recvfrom, sendto, setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use crate::lab::Lab;

/// How long a reader waits for the packet it expects; a dropped packet costs this much.
pub const PATIENCE: Duration = Duration::from_millis(800);
pub const CHUNK_DATA: u8 = 0;
pub const CHUNK_INIT: u8 = 1;
pub const CHUNK_INIT_ACK: u8 = 2;
pub const CHUNK_COOKIE_ECHO: u8 = 10;
pub const CHUNK_HEARTBEAT: u8 = 4;
pub const CHUNK_COOKIE_ACK: u8 = 11;

/// CRC32c (Castagnoli), the checksum of RFC 9260 appendix A, bit by bit.
pub fn crc32c(data: &[u8]) -> u32 {
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
pub fn sctp_packet(sport: u16, dport: u16, vtag: u32, chunk: &[u8]) -> Vec<u8> {
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
pub fn init_chunk(kind: u8, tag: u32) -> Vec<u8> {
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
pub struct Seen {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub vtag: u32,
    pub chunk: u8,
    pub initiate_tag: u32,
    pub checksum_ok: bool,
}

impl Seen {
    pub fn parse(src: IpAddr, dst: IpAddr, sctp: &[u8]) -> Option<Seen> {
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
pub struct Raw {
    fd: OwnedFd,
    v6: bool,
}

impl Raw {
    pub fn open(lab: &Lab, role: &str, v6: bool) -> Raw {
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

    pub fn send(&self, to: IpAddr, packet: &[u8]) {
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
    pub fn receive(&self, wanted: impl Fn(&Seen) -> bool) -> Option<Seen> {
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

    pub fn read_one(&self) -> Option<Seen> {
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
pub fn fresh_tag() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let next = NEXT.fetch_add(1, Ordering::SeqCst);
    let tag = (std::process::id() << 12) ^ next.wrapping_mul(0x9E37_79B1);
    // An initiate tag of 0 is not allowed (RFC 9260 3.3.2).
    tag.max(1)
}

/// What one INIT / INIT-ACK exchange showed: the INIT as the target read it, and the
/// INIT-ACK as the client read it, if either arrived.
#[derive(Debug)]
pub struct Exchange {
    pub at_target: Option<Seen>,
    pub reply: Option<Seen>,
}

/// Sends an INIT from `client` (source port `sport`) to `addr`:`port` and, if it arrives in
/// `target`, answers it there with an INIT-ACK to where it came from.
pub fn exchange(
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
pub struct Association {
    pub client: Raw,
    pub server: Raw,
    /// Where the client sends: the published address and port, and its own port.
    pub addr: IpAddr,
    pub port: u16,
    pub sport: u16,
    /// Where the server answers: the source and port its INIT came from.
    pub peer: IpAddr,
    pub peer_port: u16,
    /// The port the server's INIT arrived at.
    pub server_port: u16,
    /// The verification tags each side puts on what it sends.
    pub to_server: u32,
    pub to_client: u32,
}

impl Association {
    pub fn establish(
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
    pub fn data_arrives(&self) -> bool {
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
    pub fn heartbeat_arrives(&self) -> bool {
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
    pub fn reply_arrives(&self) -> bool {
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
pub fn data_chunk(tsn: u32) -> Vec<u8> {
    let mut chunk = vec![CHUNK_DATA, 0x07, 0, 20];
    chunk.extend_from_slice(&tsn.to_be_bytes());
    chunk.extend_from_slice(&[0, 0, 0, 0]); // stream 0, sequence 0
    chunk.extend_from_slice(&[0, 0, 0, 0]); // payload protocol
    chunk.extend_from_slice(b"ping");
    chunk
}

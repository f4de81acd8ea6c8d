//! sock_diag: which local sockets hold a port (what `ss -ltnup` shows), read over netlink.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_sys::protocols::NETLINK_SOCK_DIAG;

use super::NetlinkError;
use super::attributes;
use super::kept::{Answered, Kept, with_kept};
use super::messages;
use super::socket::{next_seq, used_seq};
use crate::spec::Proto;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCPDIAG_GETSOCK`: the request type of `struct inet_diag_req`, and of its answers.
const TCPDIAG_GETSOCK: u16 = 18;
const TCP_LISTEN: u32 = 10;
const REQUEST_DUMP: u16 = 1 | 0x300;
/// `struct inet_diag_msg`: family, state, timer, retrans, the socket id, then counters.
const DIAG_MSG_LEN: usize = 72;

/// A socket bound to a local port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundSocket {
    pub addr: IpAddr,
    pub port: u16,
    pub inode: u32,
}

/// `struct inet_diag_req`, TCP's first interface, asking for every TCP socket in `states`
/// of both families: its family byte is not read (the kernel asks for any family), then
/// lengths and extensions, the socket id to match (all zero, so every socket), the states
/// and a field no longer used.
fn compat_request(states: u32) -> Vec<u8> {
    let mut req = vec![libc::AF_INET as u8, 0, 0, 0];
    req.resize(4 + 48, 0);
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req
}

/// `struct inet_diag_req_v2` asking for every socket of one family and protocol in `states`.
fn request(family: u8, protocol: u8, states: u32) -> Vec<u8> {
    let mut req = vec![family, protocol, 0, 0];
    req.extend_from_slice(&states.to_ne_bytes());
    // The socket id to match: all zero, so every socket.
    req.resize(56, 0);
    req
}

/// One `struct inet_diag_msg`; one shorter is an error.
fn parse(payload: &[u8]) -> Result<BoundSocket, NetlinkError> {
    let msg = payload.get(..DIAG_MSG_LEN).ok_or_else(|| {
        messages::malformed(format!(
            "a socket message of {} bytes, shorter than its {DIAG_MSG_LEN}",
            payload.len()
        ))
    })?;
    let family = msg[0];
    let port = u16::from_be_bytes([msg[4], msg[5]]);
    let src: [u8; 16] = msg[8..24].try_into().expect("16 bytes");
    let addr = if family == libc::AF_INET as u8 {
        IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(src))
    };
    let inode = u32::from_ne_bytes(msg[68..72].try_into().expect("4 bytes"));
    Ok(BoundSocket { addr, port, inode })
}

/// Every TCP or SCTP socket listening, or every UDP socket bound, in both address families.
///
/// One dump after the other on the thread's kept socket: a netlink socket runs one dump at
/// a time, and a second socket would cost more to open than the second dump takes.
///
/// A kernel without SCTP has no handler for SCTP dumps and answers ENOENT: it can have no
/// SCTP socket, so that is an empty answer, not an error. (A kernel with SCTP but without
/// the `sctp_diag` module answers the same and shows its SCTP sockets to nobody, `ss`
/// included.) An SCTP socket bound to several addresses is reported with its first one.
pub fn bound_sockets(proto: Proto) -> Result<Vec<BoundSocket>, NetlinkError> {
    let (protocol, states) = match proto {
        Proto::Udp => (libc::IPPROTO_UDP as u8, u32::MAX),
        Proto::Tcp => (libc::IPPROTO_TCP as u8, 1 << TCP_LISTEN),
        // An SCTP endpoint's listening state has TCP's number (SCTP_SS_LISTENING).
        Proto::Sctp => (libc::IPPROTO_SCTP as u8, 1 << TCP_LISTEN),
    };
    let mut found = Vec::new();
    // Both dumps on one use of the kept socket: its namespace is checked once.
    with_kept(NETLINK_SOCK_DIAG, |kept| {
        // TCP answers its first interface too, and there one walk of the listening hash
        // covers both families: the walk over every bucket, not the sockets found, is what
        // a dump costs (two dumps 39 µs against 26 µs for this one, warm). A kernel that
        // refuses it is asked the usual way.
        if proto == Proto::Tcp {
            let seq = next_seq();
            used_seq(seq);
            let message =
                attributes::message(TCPDIAG_GETSOCK, REQUEST_DUMP, seq, &compat_request(states))?;
            kept.socket.send(&message, 0).map_err(NetlinkError::Send)?;
            match read_dump(kept, seq, TCPDIAG_GETSOCK, &mut found) {
                Ok(()) => return Ok(()),
                Err(NetlinkError::Kernel { error, .. }) => {
                    log::debug!("TCPDIAG_GETSOCK refused ({error}); asking each family");
                    found.clear();
                }
                Err(error) => return Err(error),
            }
        }
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let seq = next_seq();
            used_seq(seq);
            let message = attributes::message(
                SOCK_DIAG_BY_FAMILY,
                REQUEST_DUMP,
                seq,
                &request(family, protocol, states),
            )?;
            kept.socket.send(&message, 0).map_err(NetlinkError::Send)?;
            match read_dump(kept, seq, SOCK_DIAG_BY_FAMILY, &mut found) {
                Err(NetlinkError::Kernel { error, .. })
                    if proto == Proto::Sctp && error.raw_os_error() == Some(libc::ENOENT) => {}
                other => other?,
            }
        }
        Ok(())
    })?;
    Ok(found)
}

/// Reads one dump's answers, messages of type `kind`, to its end. A dump that failed says
/// why in its NLMSG_DONE (ENOENT: no handler for the protocol) as an NLMSG_ERROR would.
fn read_dump(
    kept: &mut Kept,
    seq: u32,
    kind: u16,
    found: &mut Vec<BoundSocket>,
) -> Result<(), NetlinkError> {
    kept.read_answers(seq, |answer, payload| {
        if answer == kind {
            found.push(parse(payload)?);
        }
        Ok(Answered::More)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener on 10.0.0.1:8080 with inode 4242, as the kernel describes it.
    fn listener() -> Vec<u8> {
        let mut msg = vec![0u8; DIAG_MSG_LEN];
        msg[0] = libc::AF_INET as u8;
        msg[1] = TCP_LISTEN as u8;
        msg[4..6].copy_from_slice(&8080u16.to_be_bytes());
        msg[8..12].copy_from_slice(&[10, 0, 0, 1]);
        msg[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        // Attributes may follow; they are not read.
        msg.extend_from_slice(&[8, 0, 1, 0, 0, 0, 0, 0]);
        msg
    }

    #[test]
    fn sockets_are_read_and_short_ones_refused() {
        let socket = parse(&listener()).unwrap();
        assert_eq!(socket.addr, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!((socket.port, socket.inode), (8080, 4242));
        for cut in 0..DIAG_MSG_LEN {
            assert!(parse(&listener()[..cut]).is_err(), "cut at {cut}");
        }
    }
}

//! ctnetlink: finding and deleting connection-tracking entries.
//!
//! NAT is decided on a connection's first packet and kept in its conntrack entry, so a UDP
//! flow that was running before a port was published keeps going to the host, and one
//! that ran through a published port keeps reaching the namespace after `rm`. Deleting
//! exactly the affected entries makes the next packet take the new path.

use std::io;
use std::net::IpAddr;

use super::NetlinkError;
use super::attributes::{self, find};
use super::socket::{NLMSG_ERROR, exchange, next_seq, receive, replies, used_seq, with_shared};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_ZONE: u16 = 18;
const CTA_PROTOINFO: u16 = 4;
const CTA_PROTOINFO_SCTP: u16 = 3;
const CTA_PROTOINFO_SCTP_STATE: u16 = 1;
/// conntrack's SCTP states before an INIT-ACK was seen: `SCTP_CONNTRACK_CLOSED` (refused
/// or aborted) and `SCTP_CONNTRACK_COOKIE_WAIT` (an INIT nobody has answered).
const SCTP_CONNTRACK_CLOSED: u8 = 1;
const SCTP_CONNTRACK_COOKIE_WAIT: u8 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;

/// The original direction of a tracked connection, as far as nsport matches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub proto: u8,
    pub dst: IpAddr,
    pub dport: u16,
    /// Who answers: the original destination, or the DNAT target the flow was sent to.
    pub reply_src: Option<IpAddr>,
    /// conntrack's state of an SCTP association (`enum sctp_conntrack`); `None` for
    /// other protocols.
    pub sctp_state: Option<u8>,
}

impl Flow {
    /// Whether this is an SCTP association that nobody accepted: its INIT was never
    /// answered with an INIT-ACK, or it was refused. Such an entry only holds on to the
    /// path its first INIT took while the client retries.
    pub fn is_unanswered_sctp(&self) -> bool {
        matches!(
            self.sctp_state,
            Some(SCTP_CONNTRACK_CLOSED | SCTP_CONNTRACK_COOKIE_WAIT)
        )
    }
}

/// The nfgenmsg header of a ctnetlink message for one address family, or all (AF_UNSPEC).
fn header(family: u8) -> Vec<u8> {
    vec![family, 0, 0, 0]
}

/// The source or destination address of a tuple's IP part, of either family.
fn tuple_addr(ip: &[u8], v4: u16, v6: u16) -> Option<IpAddr> {
    find(ip, v4)
        .and_then(|a| a.ipv4())
        .or_else(|| find(ip, v6).and_then(|a| a.ipv6()))
}

/// The flow, its address family, and what identifies its entry for deletion.
fn flow_of(message: &[u8]) -> Option<(Flow, u8, Vec<u8>)> {
    // Netlink header (16 bytes), then nfgenmsg (4 bytes), then attributes.
    let family = *message.get(16)?;
    let attrs = message.get(20..)?;
    let orig = find(attrs, CTA_TUPLE_ORIG)?;
    let ip = find(orig.value, CTA_TUPLE_IP)?;
    let proto = find(orig.value, CTA_TUPLE_PROTO)?;
    let flow = Flow {
        proto: find(proto.value, CTA_PROTO_NUM)?.u8()?,
        dst: tuple_addr(ip.value, CTA_IP_V4_DST, CTA_IP_V6_DST)?,
        dport: find(proto.value, CTA_PROTO_DST_PORT)
            .and_then(|port| port.be16())
            .unwrap_or(0),
        reply_src: find(attrs, CTA_TUPLE_REPLY)
            .and_then(|reply| find(reply.value, CTA_TUPLE_IP))
            .and_then(|ip| tuple_addr(ip.value, CTA_IP_V4_SRC, CTA_IP_V6_SRC)),
        sctp_state: find(attrs, CTA_PROTOINFO)
            .and_then(|info| find(info.value, CTA_PROTOINFO_SCTP))
            .and_then(|sctp| find(sctp.value, CTA_PROTOINFO_SCTP_STATE))
            .and_then(|state| state.u8()),
    };
    // What identifies the entry for deletion: its original tuple and its zone.
    let mut key = orig.raw.to_vec();
    if let Some(zone) = find(attrs, CTA_ZONE) {
        key.extend_from_slice(zone.raw);
    }
    Some((flow, family, key))
}

/// Deletes every conntrack entry whose original direction `matches`; returns how many.
/// An entry that expires on its own meanwhile is not an error.
pub fn delete_flows(matches: impl Fn(&Flow) -> bool) -> Result<usize, NetlinkError> {
    // A dump walks every bucket of the host's conntrack table (262,144 here: 4 ms),
    // whatever this namespace tracks; a namespace that tracks nothing has nothing to forget.
    if tracked_in_this_namespace() == Some(0) {
        return Ok(0);
    }
    let kind = |message: u16| (NFNL_SUBSYS_CTNETLINK << 8) | message;
    let dump = attributes::message(
        kind(IPCTNL_MSG_CT_GET),
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        &header(libc::AF_UNSPEC as u8),
    )?;
    let mut doomed = Vec::new();
    exchange(&dump, |message| {
        if let Some((flow, family, key)) = flow_of(message)
            && matches(&flow)
        {
            doomed.push((family, key));
        }
        Ok(())
    })?;
    if doomed.is_empty() {
        return Ok(0);
    }
    // In bounded batches: one request for 230,000 flows would need a socket buffer of
    // acknowledgements the kernel cannot give (ENOBUFS), and the dump is done by now.
    with_shared(DELETE_BATCH * DELETE_BYTES, DELETE_BATCH, |shared| {
        for chunk in doomed.chunks(DELETE_BATCH) {
            let first = next_seq();
            let mut request = Vec::with_capacity(chunk.len() * DELETE_BYTES);
            for (seq, (family, key)) in chunk.iter().enumerate() {
                let payload = [header(*family), key.clone()].concat();
                request.extend(attributes::message(
                    kind(IPCTNL_MSG_CT_DELETE),
                    NLM_F_REQUEST | NLM_F_ACK,
                    first.wrapping_add(seq as u32),
                    &payload,
                )?);
            }
            let last = first.wrapping_add(chunk.len() as u32 - 1);
            used_seq(last);
            shared.socket.send(&request).map_err(NetlinkError::Send)?;
            let mut answered = 0;
            while answered < chunk.len() {
                let len = receive(&shared.socket, &mut shared.buffer, true)?;
                for reply in replies(&shared.buffer.bytes()[..len]) {
                    let reply = reply?;
                    let ours = reply.seq.wrapping_sub(first) <= last.wrapping_sub(first);
                    if reply.kind != NLMSG_ERROR || !ours {
                        continue;
                    }
                    answered += 1;
                    // A flow that expired on its own meanwhile is not an error.
                    if reply.errno != 0 && reply.errno != libc::ENOENT {
                        return Err(NetlinkError::Kernel {
                            index: None,
                            error: io::Error::from_raw_os_error(reply.errno),
                        });
                    }
                }
            }
        }
        Ok(doomed.len())
    })
}

/// How many connections the calling thread's network namespace tracks
/// (`nf_conntrack_count` is kept per namespace); `None` when that cannot be read.
pub fn tracked_in_this_namespace() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// How many flows one request deletes, and about how many bytes each takes.
const DELETE_BATCH: usize = 512;
const DELETE_BYTES: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::attributes::put;

    /// A nested conntrack tuple of an address part and a protocol part.
    fn tuple_of(ip: &[u8], proto: &[u8]) -> Vec<u8> {
        let mut tuple = Vec::new();
        put(&mut tuple, CTA_TUPLE_IP | attributes::NLA_F_NESTED, ip).unwrap();
        put(
            &mut tuple,
            CTA_TUPLE_PROTO | attributes::NLA_F_NESTED,
            proto,
        )
        .unwrap();
        tuple
    }

    #[test]
    fn reads_the_original_tuple() {
        let mut ip = Vec::new();
        put(&mut ip, 1, &[192, 0, 2, 2]).unwrap();
        put(&mut ip, CTA_IP_V4_DST, &[192, 0, 2, 1]).unwrap();
        let mut proto = Vec::new();
        put(&mut proto, CTA_PROTO_NUM, &[17]).unwrap();
        put(&mut proto, 2, &40000u16.to_be_bytes()).unwrap();
        put(&mut proto, CTA_PROTO_DST_PORT, &5353u16.to_be_bytes()).unwrap();
        let tuple = tuple_of(&ip, &proto);
        let mut attrs = Vec::new();
        put(
            &mut attrs,
            CTA_TUPLE_ORIG | attributes::NLA_F_NESTED,
            &tuple,
        )
        .unwrap();
        let inet = libc::AF_INET as u8;
        let message =
            attributes::message(0x100, 0, 1, &[header(inet), attrs.clone()].concat()).unwrap();
        let (flow, family, key) = flow_of(&message).unwrap();
        assert_eq!(family, inet);
        assert_eq!(
            flow,
            Flow {
                proto: 17,
                dst: IpAddr::from([192, 0, 2, 1]),
                dport: 5353,
                reply_src: None,
                sctp_state: None,
            }
        );
        assert_eq!(key, attrs);
    }

    #[test]
    fn reads_the_state_of_an_sctp_association() {
        let mut ip = Vec::new();
        put(&mut ip, CTA_IP_V4_DST, &[192, 0, 2, 1]).unwrap();
        let mut proto = Vec::new();
        put(&mut proto, CTA_PROTO_NUM, &[132]).unwrap();
        put(&mut proto, CTA_PROTO_DST_PORT, &3868u16.to_be_bytes()).unwrap();
        let tuple = tuple_of(&ip, &proto);
        let flow_in = |state: u8| {
            let mut sctp = Vec::new();
            put(&mut sctp, CTA_PROTOINFO_SCTP_STATE, &[state]).unwrap();
            let mut info = Vec::new();
            put(
                &mut info,
                CTA_PROTOINFO_SCTP | attributes::NLA_F_NESTED,
                &sctp,
            )
            .unwrap();
            let mut attrs = Vec::new();
            put(
                &mut attrs,
                CTA_TUPLE_ORIG | attributes::NLA_F_NESTED,
                &tuple,
            )
            .unwrap();
            put(&mut attrs, CTA_PROTOINFO | attributes::NLA_F_NESTED, &info).unwrap();
            let header = header(libc::AF_INET as u8);
            let message = attributes::message(0x100, 0, 1, &[header, attrs].concat()).unwrap();
            flow_of(&message).unwrap().0
        };
        let waiting = flow_in(SCTP_CONNTRACK_COOKIE_WAIT);
        assert_eq!((waiting.proto, waiting.dport), (132, 3868));
        assert_eq!(waiting.sctp_state, Some(SCTP_CONNTRACK_COOKIE_WAIT));
        assert!(waiting.is_unanswered_sctp());
        assert!(flow_in(SCTP_CONNTRACK_CLOSED).is_unanswered_sctp());
        // COOKIE_ECHOED, ESTABLISHED: someone answered; the association is theirs.
        for answered in [3, 4] {
            assert!(!flow_in(answered).is_unanswered_sctp(), "{answered}");
        }
    }
}

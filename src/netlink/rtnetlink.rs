//! rtnetlink: addresses, routes and links of the namespace the calling thread is in.
//!
//! Requests are built and answers taken apart here (`answer`), reading only the fields
//! nsport uses: a generic parser of every attribute cost a publish more in code and memory
//! touched for the first time than the kernel took to answer.

use std::net::IpAddr;

use netlink_sys::protocols::NETLINK_ROUTE;

use super::NetlinkError;
use super::attributes;
use super::kept::{Answered, with_kept};
use super::socket::{next_seq, used_seq};

mod answer;
#[cfg(test)]
mod fuzz;

use answer::{IFINFOMSG_LEN, RTMSG_LEN};

/// The first rtnetlink message type; those below are netlink's own.
const RTM_BASE: u16 = 16;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLA_F_NESTED: u16 = 0x8000;
const IFLA_IFNAME: u16 = 3;
/// Which parts of a link a dump leaves out (`RTEXT_FILTER_*`).
const IFLA_EXT_MASK: u16 = 29;
/// Leaves out the link's counters, two thirds of a link message that nsport never reads.
/// Kernels that do not know the flag send them anyway.
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
const RTA_DST: u16 = 1;
/// The longest interface name the kernel accepts (IFNAMSIZ without its NUL).
const IFNAME_MAX: usize = 15;

/// A route's type (`rtm_type`): where the kernel would deliver a packet.
pub const RTN_UNICAST: u8 = 1;
/// To this host: the address is one of its own.
pub const RTN_LOCAL: u8 = 2;
/// To every host of a network this host is on.
pub const RTN_BROADCAST: u8 = 3;

/// An address of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub addr: IpAddr,
    /// The length of the network prefix the address is on.
    pub prefix_len: u8,
    pub ifindex: u32,
    pub global: bool,
}

/// What nsport needs to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The bridge (or other master) this link is a port of.
    pub master: Option<u32>,
    /// For a veth, the index of its peer in the peer's namespace.
    pub peer: Option<u32>,
    pub is_bridge: bool,
    /// Whether the link is a bridge port in hairpin mode.
    pub hairpin: Option<bool>,
    pub is_loopback: bool,
}

/// The route the kernel would send a packet to an address by (`ip route get`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The route's type: `RTN_UNICAST`, `RTN_LOCAL`, `RTN_BROADCAST`, or another.
    pub kind: u8,
    /// The interface the packet would leave by.
    pub oif: Option<u32>,
}

/// Sends one request (`kind`, `flags`, then `body`) and hands each answer's payload to
/// `answer`, until the dump ends, the kernel acknowledges, or (for a request that is
/// neither a dump nor acknowledged) the first answer came.
fn request(
    kind: u16,
    flags: u16,
    body: &[u8],
    mut answer: impl FnMut(u16, &[u8]) -> Result<(), NetlinkError>,
) -> Result<(), NetlinkError> {
    let seq = next_seq();
    used_seq(seq);
    let message = attributes::message(kind, NLM_F_REQUEST | flags, seq, body)?;
    let ends_at_first = flags & (NLM_F_DUMP | NLM_F_ACK) == 0;
    with_kept(NETLINK_ROUTE, |kept| {
        kept.socket.send(&message, 0).map_err(NetlinkError::Send)?;
        kept.read_answers(seq, |kind, payload| {
            // NLMSG_NOOP and NLMSG_OVERRUN answer nothing.
            if kind < RTM_BASE {
                return Ok(Answered::More);
            }
            answer(kind, payload)?;
            Ok(match ends_at_first {
                true => Answered::Done,
                false => Answered::More,
            })
        })
    })
}

/// Whether a request failed because the kernel refused it with one of `errnos`.
fn refused_with(result: &Result<(), NetlinkError>, errnos: &[i32]) -> bool {
    matches!(result, Err(NetlinkError::Kernel { error, .. })
        if error.raw_os_error().is_some_and(|errno| errnos.contains(&errno)))
}

/// Every IPv4 and IPv6 address of the current namespace, in the kernel's order.
pub fn addresses() -> Result<Vec<InterfaceAddress>, NetlinkError> {
    // `struct ifaddrmsg` of family AF_UNSPEC: every family.
    addresses_of_family(libc::AF_UNSPEC as u8)
}

/// Every IPv4 address of the current namespace, in the kernel's order: a dump of one
/// family leaves out every interface's IPv6 link-local address.
pub fn ipv4_addresses() -> Result<Vec<InterfaceAddress>, NetlinkError> {
    addresses_of_family(libc::AF_INET as u8)
}

fn addresses_of_family(family: u8) -> Result<Vec<InterfaceAddress>, NetlinkError> {
    let mut found = Vec::new();
    let mut ifaddrmsg = [0; 8];
    ifaddrmsg[0] = family;
    request(RTM_GETADDR, NLM_F_DUMP, &ifaddrmsg, |kind, payload| {
        if kind == RTM_NEWADDR {
            found.extend(answer::address(payload)?);
        }
        Ok(())
    })?;
    Ok(found)
}

/// `struct ifinfomsg` asking for the link with `index` (0: by name, or every link).
fn ifinfomsg(index: u32) -> Vec<u8> {
    let mut body = vec![0; IFINFOMSG_LEN];
    body[4..8].copy_from_slice(&index.to_ne_bytes());
    body
}

/// Asks for one link; none when there is no such link.
fn one_link(body: &[u8]) -> Result<Option<Link>, NetlinkError> {
    let mut found = None;
    let result = request(RTM_GETLINK, 0, body, |kind, payload| {
        if kind == RTM_NEWLINK {
            found = Some(answer::link(payload)?);
        }
        Ok(())
    });
    if refused_with(&result, &[libc::ENODEV]) {
        return Ok(None);
    }
    result.map(|()| found)
}

/// Every link of the current namespace.
pub fn links() -> Result<Vec<Link>, NetlinkError> {
    let mut body = ifinfomsg(0);
    attributes::put(
        &mut body,
        IFLA_EXT_MASK,
        &RTEXT_FILTER_SKIP_STATS.to_ne_bytes(),
    )?;
    let mut found = Vec::new();
    request(RTM_GETLINK, NLM_F_DUMP, &body, |kind, payload| {
        if kind == RTM_NEWLINK {
            found.push(answer::link(payload)?);
        }
        Ok(())
    })?;
    Ok(found)
}

/// The link with this index, if there is one.
pub fn link_by_index(index: u32) -> Result<Option<Link>, NetlinkError> {
    let mut body = ifinfomsg(index);
    attributes::put(
        &mut body,
        IFLA_EXT_MASK,
        &RTEXT_FILTER_SKIP_STATS.to_ne_bytes(),
    )?;
    one_link(&body)
}

/// The link with this name, if there is one.
///
/// The kernel looks the name up itself; a name it could not hold names no link, and an
/// alternative name (`ip link property add altname`) finds the link but is not its name.
pub fn link_by_name(name: &str) -> Result<Option<Link>, NetlinkError> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains('\0') {
        return Ok(None);
    }
    let mut body = ifinfomsg(0);
    let mut ifname = name.as_bytes().to_vec();
    ifname.push(0);
    attributes::put(&mut body, IFLA_IFNAME, &ifname)?;
    attributes::put(
        &mut body,
        IFLA_EXT_MASK,
        &RTEXT_FILTER_SKIP_STATS.to_ne_bytes(),
    )?;
    Ok(one_link(&body)?.filter(|link| link.name == name))
}

/// The route the kernel would send a packet to `addr` by (`ip route get`); none when it
/// would send none there.
pub fn route_to(addr: IpAddr) -> Result<Option<Route>, NetlinkError> {
    let (family, prefix) = match addr {
        IpAddr::V4(_) => (libc::AF_INET as u8, 32),
        IpAddr::V6(_) => (libc::AF_INET6 as u8, 128),
    };
    // `struct rtmsg`: the family and destination length; the rest zero, as `ip` sends.
    let mut body = vec![0; RTMSG_LEN];
    body[0] = family;
    body[1] = prefix;
    attributes::put(&mut body, RTA_DST, &answer::address_bytes(addr))?;
    let mut found = None;
    let result = request(RTM_GETROUTE, 0, &body, |kind, payload| {
        if kind == RTM_NEWROUTE {
            found = Some(answer::route(payload)?);
        }
        Ok(())
    });
    // A lookup only fails for want of a route, or for a route that refuses the packet:
    // unreachable, prohibit (EACCES, which is no want of privilege here), blackhole
    // (EINVAL) and throw (EAGAIN). Either way no packet would go there.
    let no_route = [
        libc::ENETUNREACH,
        libc::EHOSTUNREACH,
        libc::EACCES,
        libc::EINVAL,
        libc::EAGAIN,
    ];
    if refused_with(&result, &no_route) {
        return Ok(None);
    }
    result.map(|()| found)
}

/// The interface the kernel would send a packet to `addr` out of (`ip route get`).
pub fn route_output_interface(addr: IpAddr) -> Result<Option<u32>, NetlinkError> {
    Ok(route_to(addr)?.and_then(|route| route.oif))
}

/// Turns hairpin mode of a bridge port on or off (`ip link set PORT type bridge_slave
/// hairpin on`), so that the bridge may send a frame back out of the port it came in on.
pub fn set_hairpin(port: u32, on: bool) -> Result<(), NetlinkError> {
    let mut port_data = Vec::new();
    attributes::put(&mut port_data, answer::IFLA_BRPORT_MODE, &[u8::from(on)])?;
    let mut info = Vec::new();
    attributes::put(&mut info, answer::IFLA_INFO_SLAVE_KIND, b"bridge\0")?;
    attributes::put(
        &mut info,
        answer::IFLA_INFO_SLAVE_DATA | NLA_F_NESTED,
        &port_data,
    )?;
    let mut body = ifinfomsg(port);
    attributes::put(&mut body, answer::IFLA_LINKINFO | NLA_F_NESTED, &info)?;
    request(RTM_NEWLINK, NLM_F_ACK, &body, |_, _| Ok(()))
}

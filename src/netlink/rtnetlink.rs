//! rtnetlink: addresses, routes and links of the namespace the calling thread is in.

use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoBridgePort, InfoKind, InfoPortData, InfoPortKind, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;

use super::NetlinkError;
use super::kept::with_kept;
use super::socket::{next_seq, used_seq};

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

/// Sends one request and collects the replies, until the dump ends or the kernel
/// acknowledges.
fn request(
    message: RouteNetlinkMessage,
    flags: u16,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    let seq = next_seq();
    used_seq(seq);
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    with_kept(NETLINK_ROUTE, |kept| {
        kept.socket.send(&buf, 0).map_err(NetlinkError::Send)?;
        let mut replies = Vec::new();
        loop {
            let data = kept.receive()?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| NetlinkError::Receive(std::io::Error::other(e.to_string())))?;
                offset += reply.header.length as usize;
                if reply.header.length == 0 {
                    break;
                }
                // What an earlier request left unread answers another sequence number.
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(error) if error.code.is_some() => {
                        return Err(NetlinkError::Kernel {
                            index: None,
                            error: error.to_io(),
                        });
                    }
                    // An acknowledgement ends a request that is not a dump.
                    NetlinkPayload::Error(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(inner) => {
                        replies.push(inner);
                        if flags & NLM_F_DUMP == 0 && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    })
}

/// Every IPv4 and IPv6 address of the current namespace, in the kernel's order.
pub fn addresses() -> Result<Vec<InterfaceAddress>, NetlinkError> {
    let replies = request(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        NLM_F_DUMP,
    )?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewAddress(message) => Some(message),
            _ => None,
        })
        .filter_map(|message| {
            // IPv4 names its own address IFA_LOCAL (IFA_ADDRESS is the peer on
            // point-to-point links); IPv6 has only IFA_ADDRESS.
            let addr = message.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Local(addr @ IpAddr::V4(_)) => Some(*addr),
                AddressAttribute::Address(addr @ IpAddr::V6(_)) => Some(*addr),
                _ => None,
            })?;
            Some(InterfaceAddress {
                addr,
                prefix_len: message.header.prefix_len,
                ifindex: message.header.index,
                global: message.header.scope == AddressScope::Universe,
            })
        })
        .collect())
}

fn link_from_message(message: LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        master: None,
        peer: None,
        is_bridge: false,
        hairpin: None,
        is_loopback: message
            .header
            .flags
            .contains(netlink_packet_route::link::LinkFlags::Loopback),
    };
    for attr in message.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Controller(master) => link.master = Some(master),
            LinkAttribute::Link(peer) => link.peer = Some(peer),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(InfoKind::Bridge) => link.is_bridge = true,
                        LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                            link.hairpin = port.iter().find_map(|attr| match attr {
                                InfoBridgePort::HairpinMode(on) => Some(*on),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// Every link of the current namespace.
pub fn links() -> Result<Vec<Link>, NetlinkError> {
    let replies = request(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_DUMP,
    )?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(message) => Some(link_from_message(message)),
            _ => None,
        })
        .collect())
}

/// The link with this index, if there is one.
pub fn link_by_index(index: u32) -> Result<Option<Link>, NetlinkError> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    match request(RouteNetlinkMessage::GetLink(message), 0) {
        Ok(replies) => Ok(replies.into_iter().find_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(message) => Some(link_from_message(message)),
            _ => None,
        })),
        Err(NetlinkError::Kernel { error, .. }) if error.raw_os_error() == Some(libc::ENODEV) => {
            Ok(None)
        }
        Err(other) => Err(other),
    }
}

/// The link with this name, if there is one.
pub fn link_by_name(name: &str) -> Result<Option<Link>, NetlinkError> {
    Ok(links()?.into_iter().find(|link| link.name == name))
}

/// The interface the kernel would send a packet to `addr` out of (`ip route get`).
pub fn route_output_interface(addr: IpAddr) -> Result<Option<u32>, NetlinkError> {
    let mut message = RouteMessage::default();
    let (family, prefix) = match addr {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    message.header.address_family = family;
    message.header.destination_prefix_length = prefix;
    message
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(addr)));
    let replies = match request(RouteNetlinkMessage::GetRoute(message), 0) {
        Ok(replies) => replies,
        Err(NetlinkError::Kernel { error, .. })
            if matches!(
                error.raw_os_error(),
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
            ) =>
        {
            return Ok(None);
        }
        Err(other) => return Err(other),
    };
    Ok(replies.into_iter().find_map(|reply| match reply {
        RouteNetlinkMessage::NewRoute(route) => {
            route.attributes.iter().find_map(|attr| match attr {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            })
        }
        _ => None,
    }))
}

/// Turns hairpin mode of a bridge port on or off (`ip link set PORT type bridge_slave
/// hairpin on`), so that the bridge may send a frame back out of the port it came in on.
pub fn set_hairpin(port: u32, on: bool) -> Result<(), NetlinkError> {
    let mut message = LinkMessage::default();
    message.header.index = port;
    message.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::PortKind(InfoPortKind::Bridge),
        LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
            on,
        )])),
    ]));
    request(RouteNetlinkMessage::NewLink(message), NLM_F_ACK).map(drop)
}

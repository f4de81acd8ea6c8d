//! Taking the kernel's rtnetlink answers apart: the messages of a datagram, and of each
//! address, link and route message only the fields nsport uses.
//!
//! Every length is checked before what it covers is read, and anything that does not fit
//! (a message longer than what is left, a header cut short, an attribute overrunning its
//! message, a value of the wrong size) makes the whole answer an error: a kernel that
//! answers in a shape nsport does not know must not be half understood.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::super::NetlinkError;
use super::super::attributes::{self, Attribute};
use super::super::messages::malformed;
use super::{InterfaceAddress, Link, Route};

/// `struct ifaddrmsg`: family, prefix length, flags, scope, interface index.
const IFADDRMSG_LEN: usize = 8;
/// `struct ifinfomsg`: family, pad, type, index, flags, change.
pub(super) const IFINFOMSG_LEN: usize = 16;
/// `struct rtmsg`: family, destination and source lengths, tos, table, protocol, scope,
/// type.
pub(super) const RTMSG_LEN: usize = 12;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RT_SCOPE_UNIVERSE: u8 = 0;

const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
pub(super) const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
pub(super) const IFLA_INFO_SLAVE_KIND: u16 = 4;
pub(super) const IFLA_INFO_SLAVE_DATA: u16 = 5;
/// The bridge port's hairpin mode (`IFLA_BRPORT_MODE`), a u8.
pub(super) const IFLA_BRPORT_MODE: u16 = 4;
const IFF_LOOPBACK: u32 = 0x8;

const RTA_OIF: u16 = 4;

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes of `bytes`, every one of which must fit: an attribute overrunning its
/// message, or bytes after the last that are not one, make an error.
fn checked_attributes<'a>(
    bytes: &'a [u8],
    what: &str,
) -> Result<impl Iterator<Item = Attribute<'a>>, NetlinkError> {
    let walked: usize = attributes::attributes(bytes)
        .map(|attribute| attribute.raw.len().next_multiple_of(4))
        .sum();
    if walked < bytes.len() {
        return Err(malformed(format!(
            "{what} attributes end in {} bytes that are not an attribute",
            bytes.len() - walked
        )));
    }
    Ok(attributes::attributes(bytes))
}

fn u32_value(attribute: &Attribute, what: &str) -> Result<u32, NetlinkError> {
    match attribute.value.try_into() {
        Ok(bytes) => Ok(u32::from_ne_bytes(bytes)),
        Err(_) => Err(malformed(format!(
            "{what} of {} bytes, not 4",
            attribute.value.len()
        ))),
    }
}

/// A string attribute: its bytes up to the first NUL.
fn string_value<'a>(attribute: &Attribute<'a>) -> &'a [u8] {
    let value = attribute.value;
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    &value[..end]
}

/// An RTM_NEWADDR message: the address, or none for one that names no address of its
/// family. IPv4 names its own address IFA_LOCAL (IFA_ADDRESS is the peer on
/// point-to-point links); IPv6 has only IFA_ADDRESS.
pub(super) fn address(payload: &[u8]) -> Result<Option<InterfaceAddress>, NetlinkError> {
    let header = payload.get(..IFADDRMSG_LEN).ok_or_else(|| {
        malformed(format!(
            "an address message of {} bytes, shorter than its header",
            payload.len()
        ))
    })?;
    let mut addr = None;
    for attribute in checked_attributes(&payload[IFADDRMSG_LEN..], "address message")? {
        let found = match (attribute.kind, attribute.value.len()) {
            (IFA_LOCAL, 4) => attribute.ipv4(),
            (IFA_ADDRESS, 16) => attribute.ipv6(),
            _ => None,
        };
        if found.is_some() {
            addr = found;
            break;
        }
    }
    Ok(addr.map(|addr| InterfaceAddress {
        addr,
        prefix_len: header[1],
        ifindex: u32_at(header, 4).expect("in the header"),
        global: header[3] == RT_SCOPE_UNIVERSE,
    }))
}

/// An RTM_NEWLINK message.
pub(super) fn link(payload: &[u8]) -> Result<Link, NetlinkError> {
    let header = payload.get(..IFINFOMSG_LEN).ok_or_else(|| {
        malformed(format!(
            "a link message of {} bytes, shorter than its header",
            payload.len()
        ))
    })?;
    let mut link = Link {
        index: u32_at(header, 4).expect("in the header"),
        name: String::new(),
        master: None,
        peer: None,
        is_bridge: false,
        hairpin: None,
        is_loopback: u32_at(header, 8).expect("in the header") & IFF_LOOPBACK != 0,
    };
    for attribute in checked_attributes(&payload[IFINFOMSG_LEN..], "link message")? {
        match attribute.kind {
            // Names are bytes to the kernel; nsport only compares them with names it
            // checked to be ASCII, so one that is not UTF-8 can match none of them.
            IFLA_IFNAME => {
                link.name = String::from_utf8_lossy(string_value(&attribute)).into_owned();
            }
            IFLA_MASTER => link.master = Some(u32_value(&attribute, "a link's master")?),
            IFLA_LINK => link.peer = Some(u32_value(&attribute, "a link's peer")?),
            IFLA_LINKINFO => link_info(attribute.value, &mut link)?,
            _ => {}
        }
    }
    Ok(link)
}

/// IFLA_LINKINFO: whether the link is a bridge, and the hairpin mode of a bridge port.
/// The port data is a bridge port's only when the port kind says so.
fn link_info(bytes: &[u8], link: &mut Link) -> Result<(), NetlinkError> {
    let mut port_kind: &[u8] = &[];
    let mut port_data = None;
    for attribute in checked_attributes(bytes, "link info")? {
        match attribute.kind {
            IFLA_INFO_KIND => link.is_bridge = string_value(&attribute) == b"bridge",
            IFLA_INFO_SLAVE_KIND => port_kind = string_value(&attribute),
            IFLA_INFO_SLAVE_DATA => port_data = Some(attribute.value),
            _ => {}
        }
    }
    if let Some(data) = port_data
        && port_kind == b"bridge"
    {
        for attribute in checked_attributes(data, "bridge port")? {
            if attribute.kind == IFLA_BRPORT_MODE {
                let mode = attribute
                    .u8()
                    .ok_or_else(|| malformed("an empty hairpin mode".to_string()))?;
                link.hairpin = Some(mode != 0);
                break;
            }
        }
    }
    Ok(())
}

/// An RTM_NEWROUTE message answering a route lookup: its type and output interface.
pub(super) fn route(payload: &[u8]) -> Result<Route, NetlinkError> {
    let header = payload.get(..RTMSG_LEN).ok_or_else(|| {
        malformed(format!(
            "a route message of {} bytes, shorter than its header",
            payload.len()
        ))
    })?;
    let mut oif = None;
    for attribute in checked_attributes(&payload[RTMSG_LEN..], "route message")? {
        if attribute.kind == RTA_OIF {
            oif = Some(u32_value(&attribute, "a route's output interface")?);
        }
    }
    Ok(Route {
        kind: header[7],
        oif,
    })
}

/// The bytes of an address as a route lookup carries it.
pub(super) fn address_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(v4) => Ipv4Addr::octets(&v4).to_vec(),
        IpAddr::V6(v6) => Ipv6Addr::octets(&v6).to_vec(),
    }
}

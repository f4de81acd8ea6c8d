//! One published port as plain data: its host side, its target, and where it came from.

use std::net::IpAddr;

use super::source::SourcePrefix;
use crate::spec::{Proto, with_port};

/// One published port: host side, target, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Mapping {
    pub proto: Proto,
    /// `None` when published on every local address of the target's family.
    pub host_addr: Option<IpAddr>,
    /// The interface the mapping is published on (`--on`): only traffic that arrives on it
    /// is translated, whatever addresses it has. `None` for every interface.
    #[serde(default)]
    pub on: Option<String>,
    pub host_port: u16,
    /// The last host port of a range published as one (an identity range: its target
    /// ports run from `to_port` on, one for one); `None` for a single port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port_end: Option<u16>,
    /// The target; its family is the mapping's family.
    pub to_addr: IpAddr,
    pub to_port: u16,
    /// The host-side interface toward the target.
    pub via: String,
    /// The namespace the target address was read from, when given by `--netns`.
    #[serde(default)]
    pub netns: Option<String>,
    /// That namespace's inode, which tells a deleted and re-created namespace apart.
    #[serde(default)]
    pub netns_inode: Option<u64>,
    /// Published with `--allow-direct`: hosts routing to the target may reach its other
    /// ports.
    #[serde(default)]
    pub allow_direct: bool,
    /// Made by the CNI plugin for this container (`CNI_CONTAINERID`) …
    #[serde(default)]
    pub container: Option<String>,
    /// … and this interface of it (`CNI_IFNAME`) …
    #[serde(default)]
    pub container_ifname: Option<String>,
    /// … on this CNI network (the configuration's `name`).
    #[serde(default)]
    pub network: Option<String>,
    /// The sources that may use the host port (`--allow-from`), in canonical form; empty
    /// for every source. The list belongs to the host port (protocol and number): every
    /// mapping of the port has the same one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<SourcePrefix>,
}

#[cfg(test)]
impl Mapping {
    /// A mapping for unit tests to start from: `8080/tcp` to `172.18.0.2:80` via `br0`,
    /// every optional part absent; tests change what they are about with `..`.
    pub fn example() -> Mapping {
        Mapping {
            proto: Proto::Tcp,
            host_addr: None,
            on: None,
            host_port: 8080,
            host_port_end: None,
            to_addr: IpAddr::from([172, 18, 0, 2]),
            to_port: 80,
            via: "br0".into(),
            netns: None,
            netns_inode: None,
            allow_direct: false,
            container: None,
            container_ifname: None,
            network: None,
            allow_from: Vec::new(),
        }
    }
}

impl Mapping {
    /// The host side as users write it: `8080/tcp`, `127.0.0.1:8080/tcp`, `8080/tcp (IPv6)`,
    /// `20000-29999/tcp`, `8080/tcp on eth0`.
    pub fn host_label(&self) -> String {
        let family = if self.is_ipv6() { " (IPv6)" } else { "" };
        let ports = self.host_ports_text();
        let on = self
            .on
            .as_ref()
            .map(|name| format!(" on {name}"))
            .unwrap_or_default();
        match self.host_addr {
            Some(addr) => format!("{}/{}{on}", with_port(addr, &ports), self.proto),
            None => format!("{ports}/{}{family}{on}", self.proto),
        }
    }

    /// The host port, or the first and last of a range: `8080`, `20000-29999`.
    pub fn host_ports_text(&self) -> String {
        match self.host_port_end {
            Some(end) => format!("{}-{end}", self.host_port),
            None => self.host_port.to_string(),
        }
    }

    /// The target port, or the first and last of a range.
    pub fn to_ports_text(&self) -> String {
        match self.to_port_end() {
            Some(end) => format!("{}-{end}", self.to_port),
            None => self.to_port.to_string(),
        }
    }

    /// Whether it publishes a range of ports as one.
    pub fn is_range(&self) -> bool {
        self.host_port_end.is_some()
    }

    /// The host ports it publishes.
    pub fn host_ports(&self) -> std::ops::RangeInclusive<u16> {
        self.host_port..=self.host_port_end.unwrap_or(self.host_port)
    }

    /// Whether it publishes this host port.
    pub fn has_host_port(&self, port: u16) -> bool {
        self.host_ports().contains(&port)
    }

    /// The last target port of a range.
    pub fn to_port_end(&self) -> Option<u16> {
        self.host_port_end
            .map(|end| self.to_port.wrapping_add(end - self.host_port))
    }

    /// The target port that host port `port` (one of its own) leads to.
    pub fn to_port_of(&self, port: u16) -> u16 {
        self.to_port.wrapping_add(port.wrapping_sub(self.host_port))
    }

    /// The same mapping for host ports `start..=end`, a part of its own: a range of one
    /// port is a single port.
    pub fn part(&self, start: u16, end: u16) -> Mapping {
        Mapping {
            host_port: start,
            host_port_end: (end > start).then_some(end),
            to_port: self.to_port_of(start),
            ..self.clone()
        }
    }

    /// Where it leads: `172.18.0.2:80 via br0 (netns ns1)`.
    pub fn target_label(&self) -> String {
        let to = with_port(self.to_addr, self.to_ports_text());
        let mut label = format!("{to} via {}", self.via);
        if let Some(netns) = &self.netns {
            label.push_str(&format!(" (netns {netns})"));
        }
        label
    }

    pub fn is_ipv6(&self) -> bool {
        self.to_addr.is_ipv6()
    }

    /// Whether the mapping can be reached through the host's loopback. Only IPv4 can:
    /// 127.0.0.1 is DNATed with route_localnet on `via`; `[::1]` never is. Nor can a
    /// mapping bound to an interface: the host's own traffic has no input interface.
    pub fn serves_loopback(&self) -> bool {
        !self.is_ipv6() && self.on.is_none() && self.host_addr.is_none_or(|addr| addr.is_loopback())
    }

    /// How specific the host side is: the order in which `publish` looks the maps up, the
    /// most specific (highest) first: an interface and an address, an interface, an
    /// address, any.
    pub fn rank(&self) -> u8 {
        u8::from(self.host_addr.is_some()) + 2 * u8::from(self.on.is_some())
    }

    /// Docker's overlap rule: whether two mappings' host sides differ but could match the
    /// same packet, as two sockets would clash: same family and protocol, a host port in
    /// common, and every narrowing both have (interface, address) agrees. (Host sides of
    /// the same kind that share a port are a conflict of their own: `overlaps`.)
    pub fn overlaps_as_sockets(&self, other: &Mapping) -> bool {
        fn agree<T: PartialEq>(x: &Option<T>, y: &Option<T>) -> bool {
            x.is_none() || y.is_none() || x == y
        }
        self.is_ipv6() == other.is_ipv6()
            && self.proto == other.proto
            && self.host_port <= *other.host_ports().end()
            && other.host_port <= *self.host_ports().end()
            && agree(&self.on, &other.on)
            && agree(&self.host_addr, &other.host_addr)
            && (self.on != other.on || self.host_addr != other.host_addr)
    }
}

//! One published port as plain data: its host side, its target, and where it came from.

use std::net::IpAddr;

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
}

impl Mapping {
    /// The host side as users write it: `8080/tcp`, `127.0.0.1:8080/tcp`, `8080/tcp (IPv6)`,
    /// `8080/tcp on eth0`.
    pub fn host_label(&self) -> String {
        let family = if self.is_ipv6() { " (IPv6)" } else { "" };
        let on = self
            .on
            .as_ref()
            .map(|name| format!(" on {name}"))
            .unwrap_or_default();
        match self.host_addr {
            Some(addr) => format!("{}/{}{on}", with_port(addr, self.host_port), self.proto),
            None => format!("{}/{}{family}{on}", self.host_port, self.proto),
        }
    }

    /// Where it leads: `172.18.0.2:80 via br0 (netns ns1)`.
    pub fn target_label(&self) -> String {
        let to = with_port(self.to_addr, self.to_port);
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

    /// Whether two mappings' host sides could match the same packet, being different host
    /// sides (a host side taken twice is a conflict of its own): same family, protocol and
    /// port, and every narrowing both have (interface, address) agrees.
    pub fn overlaps(&self, other: &Mapping) -> bool {
        fn agree<T: PartialEq>(x: &Option<T>, y: &Option<T>) -> bool {
            x.is_none() || y.is_none() || x == y
        }
        self.is_ipv6() == other.is_ipv6()
            && self.proto == other.proto
            && self.host_port == other.host_port
            && agree(&self.on, &other.on)
            && agree(&self.host_addr, &other.host_addr)
            && (self.on != other.on || self.host_addr != other.host_addr)
    }
}

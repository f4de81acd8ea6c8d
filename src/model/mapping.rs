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
    /// The sources that may use the host port (`--allow-from`), in canonical form; empty
    /// for every source. The list belongs to the host port (protocol and number): every
    /// mapping of the port has the same one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<SourcePrefix>,
}

impl Mapping {
    /// The host side as users write it: `8080/tcp`, `127.0.0.1:8080/tcp`, `8080/tcp (IPv6)`.
    pub fn host_label(&self) -> String {
        let family = if self.is_ipv6() { " (IPv6)" } else { "" };
        match self.host_addr {
            Some(addr) => format!("{}/{}", with_port(addr, self.host_port), self.proto),
            None => format!("{}/{}{family}", self.host_port, self.proto),
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
    /// 127.0.0.1 is DNATed with route_localnet on `via`; `[::1]` never is.
    pub fn serves_loopback(&self) -> bool {
        !self.is_ipv6() && self.host_addr.is_none_or(|addr| addr.is_loopback())
    }
}

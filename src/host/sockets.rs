//! Host sockets that already hold a port nsport is asked to publish.
//!
//! A published port is DNATed before any local socket sees it, so a host process that
//! listens on the same port silently stops receiving. nsport refuses such a publish unless
//! forced, and `ls` marks mappings that shadow a listener started later.

use std::collections::BTreeSet;
use std::fs;
use std::net::IpAddr;

use crate::error::{Error, kernel};
use crate::netlink::sock_diag::{self, BoundSocket};
use crate::ruleset::Mapping;
use crate::spec::Proto;

/// The host sockets of every protocol that can receive traffic for a mapping.
pub struct HostSockets {
    tcp: Vec<BoundSocket>,
    udp: Vec<BoundSocket>,
    sctp: Vec<BoundSocket>,
}

impl HostSockets {
    /// Reads the listening TCP and SCTP and the bound UDP sockets of the current
    /// namespace, of the protocols `mappings` use only: a TCP-only change asks for no more.
    pub fn read<'a>(mappings: impl IntoIterator<Item = &'a Mapping>) -> Result<HostSockets, Error> {
        let protos: BTreeSet<Proto> = mappings.into_iter().map(|m| m.proto).collect();
        let dump = |proto: Proto| {
            if protos.contains(&proto) {
                sock_diag::bound_sockets(proto).map_err(kernel)
            } else {
                Ok(Vec::new())
            }
        };
        Ok(HostSockets {
            tcp: dump(Proto::Tcp)?,
            udp: dump(Proto::Udp)?,
            sctp: dump(Proto::Sctp)?,
        })
    }

    /// The socket a mapping would shadow, described with its process, if there is one.
    pub fn shadowed_by(&self, mapping: &Mapping) -> Option<String> {
        let sockets = match mapping.proto {
            Proto::Tcp => &self.tcp,
            Proto::Udp => &self.udp,
            Proto::Sctp => &self.sctp,
        };
        let socket = sockets
            .iter()
            .find(|socket| mapping.has_host_port(socket.port) && receives(socket.addr, mapping))?;
        let at = match socket.addr {
            IpAddr::V6(addr) => format!("[{addr}]:{}", socket.port),
            IpAddr::V4(addr) => format!("{addr}:{}", socket.port),
        };
        Some(match owner(socket.inode) {
            Some((pid, name)) => format!("{name} (pid {pid}) on {at}"),
            None => format!("a socket on {at}"),
        })
    }
}

/// Whether a socket bound to `addr` receives traffic for the mapping's host address.
fn receives(addr: IpAddr, mapping: &Mapping) -> bool {
    if mapping.is_ipv6() {
        return match addr {
            IpAddr::V4(_) => false,
            // Link-local and loopback traffic is never DNATed, so it still reaches them.
            IpAddr::V6(v6) if v6.is_loopback() || v6.is_unicast_link_local() => false,
            IpAddr::V6(v6) => {
                v6.is_unspecified() || mapping.host_addr.is_none_or(|host| host == IpAddr::V6(v6))
            }
        };
    }
    let v4 = match addr {
        IpAddr::V4(v4) => v4,
        // `::` takes IPv4 too unless IPV6_V6ONLY; a v4-mapped address is IPv4.
        IpAddr::V6(v6) if v6.is_unspecified() => return true,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4,
            None => return false,
        },
    };
    v4.is_unspecified() || mapping.host_addr.is_none_or(|host| host == IpAddr::V4(v4))
}

/// The process holding socket `inode`: pid and command name, from /proc.
fn owner(inode: u32) -> Option<(u32, String)> {
    let link = format!("socket:[{inode}]");
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == link.as_str())
        });
        if holds {
            let name = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some((pid, name.trim().to_string()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn mapping(host_addr: Option<Ipv4Addr>) -> Mapping {
        Mapping {
            host_addr: host_addr.map(IpAddr::V4),
            host_port: 3000,
            to_port: 3000,
            ..Mapping::example()
        }
    }

    #[test]
    fn which_sockets_receive_a_mappings_traffic() {
        let any = mapping(None);
        let one = mapping(Some(Ipv4Addr::new(192, 0, 2, 1)));
        let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
        assert!(receives(v4(0, 0, 0, 0), &any));
        assert!(receives(v4(127, 0, 0, 1), &any));
        assert!(receives(v4(0, 0, 0, 0), &one));
        assert!(receives(v4(192, 0, 2, 1), &one));
        assert!(!receives(v4(127, 0, 0, 1), &one));
        assert!(receives(IpAddr::V6(Ipv6Addr::UNSPECIFIED), &one));
        assert!(!receives(IpAddr::V6(Ipv6Addr::LOCALHOST), &any));
        let mapped = Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped();
        assert!(receives(IpAddr::V6(mapped), &one));
        let six = Mapping {
            to_addr: "2001:db8:1::2".parse().unwrap(),
            ..mapping(None)
        };
        assert!(receives(IpAddr::V6(Ipv6Addr::UNSPECIFIED), &six));
        assert!(receives("2001:db8::1".parse().unwrap(), &six));
        assert!(!receives("fe80::1".parse().unwrap(), &six));
        assert!(!receives(IpAddr::V6(Ipv6Addr::LOCALHOST), &six));
        assert!(!receives(v4(0, 0, 0, 0), &six));
    }
}

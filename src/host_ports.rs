//! Host ports nsport chooses where a request leaves them to it (`::80`, `127.0.0.1::80`),
//! as Docker chooses them.

use std::net::IpAddr;

use anyhow::Context;
use nsport::{PublishRequest, PublishSpec};

/// The specs to publish, with a free host port put in where a request leaves it to
/// nsport (`::80`, `127.0.0.1::80`), and those chosen. Chosen as Docker chooses: the first
/// port (or run of ports) of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`)
/// that no host socket holds on that address (a bind tells), that nsport has not
/// published, that this command does not name, and that is not in `avoid`.
pub(crate) fn choose_host_ports(
    requests: &[PublishRequest],
    avoid: &[(nsport::Proto, u16)],
) -> anyhow::Result<(Vec<PublishSpec>, Vec<PublishSpec>)> {
    if requests.iter().all(|r| r.host_ports.is_some()) {
        return Ok((
            requests.iter().filter_map(PublishRequest::spec).collect(),
            Vec::new(),
        ));
    }
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .unwrap_or((32768, 60999));
    let mut taken: std::collections::HashSet<(nsport::Proto, u16)> =
        avoid.iter().copied().collect();
    for mapping in nsport::list()? {
        taken.extend(mapping.host_ports().map(|port| (mapping.proto, port)));
    }
    for request in requests {
        if let Some(spec) = request.spec() {
            taken.extend(spec.host_ports.ports().map(|port| (spec.proto, port)));
        }
    }
    // Rust has no SCTP socket to try a bind with, and the kernel may have no SCTP at all:
    // the ports that host SCTP sockets listen on are read once, and taken on any address.
    let sctp_held: std::collections::HashSet<u16> = if requests
        .iter()
        .any(|r| r.host_ports.is_none() && r.proto == nsport::Proto::Sctp)
    {
        nsport::netlink::sock_diag::bound_sockets(nsport::Proto::Sctp)
            .context("cannot read the host's SCTP sockets")?
            .into_iter()
            .map(|socket| socket.port)
            .collect()
    } else {
        Default::default()
    };
    let mut specs = Vec::new();
    let mut chosen = Vec::new();
    for request in requests {
        if let Some(spec) = request.spec() {
            specs.push(spec);
            continue;
        }
        let len = request.ns_ports.len() as u16;
        let free = |port: u16| {
            !taken.contains(&(request.proto, port))
                && match request.proto {
                    nsport::Proto::Sctp => !sctp_held.contains(&port),
                    proto => bindable(request.host_addr, proto, port),
                }
        };
        let start = (low..=high.saturating_sub(len - 1))
            .find(|&start| (start..start + len).all(free))
            .with_context(|| {
                format!(
                    "no {len} free host ports for {request} in the ephemeral range {low}-{high}"
                )
            })?;
        let spec = request.with_host_start(start);
        taken.extend(spec.host_ports.ports().map(|port| (spec.proto, port)));
        specs.push(spec);
        chosen.push(spec);
    }
    Ok((specs, chosen))
}

/// Whether no host socket holds `port` on `addr` (every address when `None`): a bind
/// succeeds. Only "in use" counts as taken; any other refusal (an address that is not the
/// host's) is left for the publish to report.
fn bindable(addr: Option<IpAddr>, proto: nsport::Proto, port: u16) -> bool {
    let addrs: Vec<IpAddr> = match addr {
        Some(addr) => vec![addr],
        // [::] without IPV6_V6ONLY covers both families; 0.0.0.0 where IPv6 is off.
        None => vec![
            IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED),
            IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED),
        ],
    };
    for addr in addrs {
        let bound = match proto {
            nsport::Proto::Tcp => std::net::TcpListener::bind((addr, port)).map(drop),
            nsport::Proto::Udp => std::net::UdpSocket::bind((addr, port)).map(drop),
            // std has no SCTP socket; choose_host_ports asks sock_diag instead.
            nsport::Proto::Sctp => Ok(()),
        };
        match bound {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => return false,
            Err(_) => {}
        }
    }
    true
}

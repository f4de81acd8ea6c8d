//! Docker's `-p` syntax: `[HOST_ADDR:]HOST_PORT[-END]:NS_PORT[-END][/PROTO]`.
//!
//! Parsing is pure so that every accepted and refused form is checked by table tests, and
//! so that bad input is refused before anything touches the kernel.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A transport protocol nsport can publish.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    /// SCTP (RFC 9260): its common header starts with the two ports, as TCP's and UDP's
    /// do, so the same `meta l4proto . th dport` key finds it and conntrack NATs it.
    Sctp,
}

impl Proto {
    /// The IP protocol number, as `meta l4proto` loads it.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }

    pub fn from_number(number: u8) -> Option<Proto> {
        match number {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            132 => Some(Proto::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        })
    }
}

impl FromStr for Proto {
    type Err = SpecError;

    /// Case-insensitive, as Docker reads it: `tcp`, `TCP`, `Udp`, `SCTP`.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "sctp" => Ok(Proto::Sctp),
            other => Err(SpecError::Protocol(other.to_string())),
        }
    }
}

/// An inclusive range of ports; a single port is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn len(self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    pub fn is_empty(self) -> bool {
        false
    }

    pub fn ports(self) -> impl Iterator<Item = u16> {
        self.start..=self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// Why a port specification was refused. Each message names the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid port {0:?}: expected a number from 1 to 65535")]
    Port(String),
    #[error("invalid port range {0:?}: the end is before the start")]
    ReversedRange(String),
    #[error("port ranges {host:?} and {ns:?} differ in length ({host_len} and {ns_len} ports)")]
    MismatchedRanges {
        host: String,
        ns: String,
        host_len: u32,
        ns_len: u32,
    },
    #[error("unknown protocol {0:?}: expected tcp, udp or sctp")]
    Protocol(String),
    #[error(
        "invalid host address {0:?}: expected an IPv4 address such as 192.0.2.1 or a bracketed IPv6 address such as [2001:db8::1]"
    )]
    Address(String),
    #[error(
        "host address [::1] cannot be published: Linux cannot DNAT IPv6 loopback traffic (there is no route_localnet for IPv6); publish on 127.0.0.1 or on another address of the host instead"
    )]
    Ipv6Loopback,
    #[error("host address [{0}] is link-local: link-local addresses are never published")]
    LinkLocal(Ipv6Addr),
    #[error("IPv6 host address {0:?} must be in brackets, as in [{0}]:8080:80")]
    Unbracketed(String),
    #[error(
        "invalid publish spec {0:?}: expected [HOST_ADDR:]HOST_PORT[-END]:NS_PORT[-END][/PROTO]"
    )]
    Shape(String),
    #[error(
        "{0:?} leaves the host port for nsport to choose, which only `nsport add` does: give the host port"
    )]
    HostPortToChoose(String),
}

/// One `PUBLISH` argument of `nsport add`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublishSpec {
    /// `None` publishes on every local address of the host, 127.0.0.1 included.
    pub host_addr: Option<IpAddr>,
    pub host_ports: PortRange,
    pub ns_ports: PortRange,
    pub proto: Proto,
}

impl PublishSpec {
    /// Pairs each host port with its namespace port.
    pub fn port_pairs(&self) -> impl Iterator<Item = (u16, u16)> + use<> {
        self.host_ports.ports().zip(self.ns_ports.ports())
    }
}

impl FromStr for PublishSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let request: PublishRequest = text.parse()?;
        request
            .spec()
            .ok_or_else(|| SpecError::HostPortToChoose(text.to_string()))
    }
}

/// A `PUBLISH` argument that may leave the host port for nsport to choose, as Docker's
/// `HOST_ADDR::NS_PORT` and `::NS_PORT` do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishRequest {
    pub host_addr: Option<IpAddr>,
    /// `None`: a free host port (or run of ports, as long as `ns_ports`) is to be chosen.
    pub host_ports: Option<PortRange>,
    pub ns_ports: PortRange,
    pub proto: Proto,
}

impl PublishRequest {
    /// The spec, when the host port is given.
    pub fn spec(&self) -> Option<PublishSpec> {
        Some(PublishSpec {
            host_addr: self.host_addr,
            host_ports: self.host_ports?,
            ns_ports: self.ns_ports,
            proto: self.proto,
        })
    }

    /// The spec with the host ports chosen to start at `start`.
    pub fn with_host_start(&self, start: u16) -> PublishSpec {
        let len = self.ns_ports.end - self.ns_ports.start;
        PublishSpec {
            host_addr: self.host_addr,
            host_ports: PortRange {
                start,
                end: start + len,
            },
            ns_ports: self.ns_ports,
            proto: self.proto,
        }
    }
}

impl fmt::Display for PublishRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.spec() {
            Some(spec) => spec.fmt(f),
            None => {
                match self.host_addr {
                    Some(addr) => write_host_addr(f, addr)?,
                    None => f.write_str(":")?,
                }
                write!(f, ":{}/{}", self.ns_ports, self.proto)
            }
        }
    }
}

impl FromStr for PublishRequest {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let (body, proto) = split_proto(text)?;
        let (host_addr, ports) = split_host_addr(body, text)?;
        let (host, ns) = match ports.split_once(':') {
            Some((host, ns)) => (host, ns),
            // `3000` alone means `3000:3000` (Docker would choose the host port).
            None => (ports, ports),
        };
        if ns.is_empty() || ns.contains(':') {
            return Err(SpecError::Shape(text.to_string()));
        }
        let ns_ports = parse_range(ns)?;
        // An empty host port (`::80`, `127.0.0.1::80`): nsport chooses one, as Docker does.
        let host_ports = match host {
            "" => None,
            host => Some(parse_range(host)?),
        };
        if let Some(host_ports) = host_ports
            && host_ports.len() != ns_ports.len()
        {
            return Err(SpecError::MismatchedRanges {
                host: host.to_string(),
                ns: ns.to_string(),
                host_len: host_ports.len(),
                ns_len: ns_ports.len(),
            });
        }
        Ok(PublishRequest {
            host_addr,
            host_ports,
            ns_ports,
            proto,
        })
    }
}

/// An address and port as they are written: IPv6 in brackets.
pub fn with_port(addr: IpAddr, port: impl fmt::Display) -> String {
    match addr {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// Writes a host address as specs spell it: IPv6 in brackets.
pub fn write_host_addr(f: &mut impl fmt::Write, addr: IpAddr) -> fmt::Result {
    match addr {
        IpAddr::V4(v4) => write!(f, "{v4}:"),
        IpAddr::V6(v6) => write!(f, "[{v6}]:"),
    }
}

impl fmt::Display for PublishSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(addr) = self.host_addr {
            write_host_addr(f, addr)?;
        }
        write!(f, "{}:{}/{}", self.host_ports, self.ns_ports, self.proto)
    }
}

/// The host side of a mapping, which is all `nsport rm` needs to name it; a whole publish
/// spec also gives the namespace side, which the mapping must then have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSpec {
    pub host_addr: Option<IpAddr>,
    pub ports: PortRange,
    pub proto: Proto,
    /// The namespace ports, when a whole publish spec was given.
    pub ns_ports: Option<PortRange>,
}

impl From<PublishSpec> for HostSpec {
    fn from(spec: PublishSpec) -> HostSpec {
        HostSpec {
            host_addr: spec.host_addr,
            ports: spec.host_ports,
            proto: spec.proto,
            ns_ports: Some(spec.ns_ports),
        }
    }
}

impl HostSpec {
    /// The namespace port a mapping on host port `port` must lead to, when the spec says.
    pub fn ns_port_for(&self, port: u16) -> Option<u16> {
        let ns = self.ns_ports?;
        Some(ns.start + (port - self.ports.start))
    }
}

impl FromStr for HostSpec {
    type Err = SpecError;

    /// Accepts the host side alone (`[HOST_ADDR:]HOST_PORT[-END][/PROTO]`) or a whole
    /// publish spec (`HOST_PORT:NS_PORT`, `HOST_ADDR:HOST_PORT:NS_PORT`), whose namespace
    /// side the mapping must then match.
    fn from_str(text: &str) -> Result<Self, SpecError> {
        let (body, proto) = split_proto(text)?;
        let (host_addr, ports) = if body.starts_with('[') {
            let (addr, rest) = split_bracketed(body)?;
            (Some(addr), rest)
        } else {
            match body.split_once(':') {
                // `ADDR:PORT`: one colon after an IPv4 address.
                Some((first, rest)) if !rest.contains(':') && first.parse::<Ipv4Addr>().is_ok() => {
                    (Some(IpAddr::V4(first.parse().expect("checked"))), rest)
                }
                None => (None, body),
                // Otherwise a whole publish spec.
                Some(_) => return Ok(text.parse::<PublishSpec>()?.into()),
            }
        };
        if ports.contains(':') {
            // A bracketed address followed by both sides of a publish spec.
            return Ok(text.parse::<PublishSpec>()?.into());
        }
        Ok(HostSpec {
            host_addr,
            ports: parse_range(ports)?,
            proto,
            ns_ports: None,
        })
    }
}

impl fmt::Display for HostSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(addr) = self.host_addr {
            write_host_addr(f, addr)?;
        }
        write!(f, "{}/{}", self.ports, self.proto)
    }
}

fn split_proto(text: &str) -> Result<(&str, Proto), SpecError> {
    match text.rsplit_once('/') {
        Some((body, proto)) => Ok((body, proto.parse()?)),
        None => Ok((text, Proto::Tcp)),
    }
}

/// Splits a bracketed IPv6 address off the front: `[ADDR]:REST` gives `(ADDR, REST)`.
fn split_bracketed(body: &str) -> Result<(IpAddr, &str), SpecError> {
    let rest = body.strip_prefix('[').expect("starts with a bracket");
    let (addr, rest) = rest
        .split_once(']')
        .ok_or_else(|| SpecError::Address(body.to_string()))?;
    let rest = rest
        .strip_prefix(':')
        .ok_or_else(|| SpecError::Shape(body.to_string()))?;
    let v6: Ipv6Addr = addr
        .parse()
        .map_err(|_| SpecError::Address(addr.to_string()))?;
    if v6.is_loopback() {
        return Err(SpecError::Ipv6Loopback);
    }
    if v6.is_unicast_link_local() {
        return Err(SpecError::LinkLocal(v6));
    }
    Ok((IpAddr::V6(v6), rest))
}

/// Splits off the host address: a bracketed IPv6 address, the part before the first colon
/// when two colons follow it (empty in `::80`: no address), or an IPv4 address before the
/// only colon (`127.0.0.1:8080`, like `[2001:db8::1]:8080`). What is left are the ports,
/// `HOST:NS`, `PORT`, or `:NS` when the host port is left to choose.
fn split_host_addr<'a>(body: &'a str, whole: &str) -> Result<(Option<IpAddr>, &'a str), SpecError> {
    if body.starts_with('[') {
        let (addr, rest) = split_bracketed(body)?;
        return Ok((Some(addr), rest));
    }
    let colons = body.matches(':').count();
    if colons > 2 {
        // Unbracketed IPv6 such as `2001:db8::1:80:80` is ambiguous.
        let addr = body.rsplitn(3, ':').nth(2).unwrap_or(body);
        return Err(match addr.parse::<Ipv6Addr>() {
            Ok(_) => SpecError::Unbracketed(addr.to_string()),
            Err(_) => SpecError::Shape(whole.to_string()),
        });
    }
    if colons == 1 {
        let (first, rest) = body.split_once(':').expect("one colon was counted");
        return Ok(match first.parse::<Ipv4Addr>() {
            Ok(v4) => (Some(IpAddr::V4(v4)), rest),
            Err(_) => (None, body),
        });
    }
    if colons == 0 {
        return Ok((None, body));
    }
    let (addr, ports) = body.split_once(':').expect("two colons were counted");
    if addr.is_empty() {
        return Ok((None, ports));
    }
    match addr.parse::<Ipv4Addr>() {
        Ok(v4) => Ok((Some(IpAddr::V4(v4)), ports)),
        Err(_) => Err(SpecError::Address(addr.to_string())),
    }
}

fn parse_port(text: &str) -> Result<u16, SpecError> {
    // `u16::from_str` accepts a leading `+`; ports are plain digits.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SpecError::Port(text.to_string()));
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(SpecError::Port(text.to_string())),
        Ok(port) => Ok(port),
    }
}

fn parse_range(text: &str) -> Result<PortRange, SpecError> {
    let (start, end) = match text.split_once('-') {
        Some((start, end)) => (parse_port(start)?, parse_port(end)?),
        None => {
            let port = parse_port(text)?;
            (port, port)
        }
    };
    if end < start {
        return Err(SpecError::ReversedRange(text.to_string()));
    }
    Ok(PortRange { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(text: &str) -> Result<PublishSpec, SpecError> {
        text.parse()
    }

    fn range(start: u16, end: u16) -> PortRange {
        PortRange { start, end }
    }

    #[test]
    fn accepted_publish_forms() {
        let cases = [
            (
                "3000",
                None,
                range(3000, 3000),
                range(3000, 3000),
                Proto::Tcp,
            ),
            (
                "3000:80",
                None,
                range(3000, 3000),
                range(80, 80),
                Proto::Tcp,
            ),
            (
                "5353:53/udp",
                None,
                range(5353, 5353),
                range(53, 53),
                Proto::Udp,
            ),
            (
                "8080:80/tcp",
                None,
                range(8080, 8080),
                range(80, 80),
                Proto::Tcp,
            ),
            (
                "[2001:db8::1]:8080:80",
                Some(IpAddr::V6("2001:db8::1".parse().unwrap())),
                range(8080, 8080),
                range(80, 80),
                Proto::Tcp,
            ),
            (
                "127.0.0.1:4000:3000",
                Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                range(4000, 4000),
                range(3000, 3000),
                Proto::Tcp,
            ),
            (
                "192.0.2.1:20000-20009:30000-30009/udp",
                Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
                range(20000, 20009),
                range(30000, 30009),
                Proto::Udp,
            ),
            (
                "1-65535",
                None,
                range(1, 65535),
                range(1, 65535),
                Proto::Tcp,
            ),
            (
                "8080:80/sctp",
                None,
                range(8080, 8080),
                range(80, 80),
                Proto::Sctp,
            ),
            (
                "[2001:db8::1]:3868-3869:3868-3869/sctp",
                Some(IpAddr::V6("2001:db8::1".parse().unwrap())),
                range(3868, 3869),
                range(3868, 3869),
                Proto::Sctp,
            ),
        ];
        for (text, host_addr, host_ports, ns_ports, proto) in cases {
            assert_eq!(
                publish(text),
                Ok(PublishSpec {
                    host_addr,
                    host_ports,
                    ns_ports,
                    proto
                }),
                "{text}"
            );
        }
    }

    #[test]
    fn refused_publish_forms_name_the_bad_value() {
        let cases = [
            ("0", "\"0\""),
            ("65536:80", "\"65536\""),
            ("3000:0", "\"0\""),
            ("3002-3000:80-82", "\"3002-3000\""),
            ("3000-3002:80-81", "\"3000-3002\""),
            ("3000/dccp", "\"dccp\""),
            ("3000/sctp6", "\"sctp6\""),
            ("3000/ sctp", "\" sctp\""),
            ("3000/", "\"\""),
            ("300.0.0.1:80:80", "\"300.0.0.1\""),
            ("[2001:db8::g]:80:80", "\"2001:db8::g\""),
            ("[::1]:80:80", "[::1]"),
            ("[fe80::1]:80:80", "[fe80::1]"),
            ("2001:db8::1:80:80", "[2001:db8::1]"),
            ("[2001:db8::1]80:80", "\"[2001:db8::1]80:80\""),
            ("a:b:c:d", "\"a:b:c:d\""),
            ("+80", "\"+80\""),
            ("", "\"\""),
            ("80:", "\"80:\""),
        ];
        for (text, named) in cases {
            let err = publish(text).expect_err(text).to_string();
            assert!(err.contains(named), "{text}: {err} should name {named}");
        }
    }

    #[test]
    fn port_pairs_follow_both_ranges() {
        let spec = publish("8000-8002:9000-9002").unwrap();
        let pairs: Vec<_> = spec.port_pairs().collect();
        assert_eq!(pairs, [(8000, 9000), (8001, 9001), (8002, 9002)]);
    }

    #[test]
    fn host_spec_forms() {
        let localhost = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let spec: HostSpec = "127.0.0.1:4000/udp".parse().unwrap();
        assert_eq!(spec.host_addr, localhost);
        assert_eq!(spec.ports, range(4000, 4000));
        assert_eq!(spec.proto, Proto::Udp);
        let spec: HostSpec = "3000-3001".parse().unwrap();
        assert_eq!(
            (spec.host_addr, spec.ports, spec.proto),
            (None, range(3000, 3001), Proto::Tcp)
        );
        // A whole publish spec names its host side.
        let spec: HostSpec = "127.0.0.1:4000:3000/udp".parse().unwrap();
        assert_eq!(
            (spec.host_addr, spec.ports),
            (Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), range(4000, 4000))
        );
        let spec: HostSpec = "8080:80".parse().unwrap();
        assert_eq!((spec.host_addr, spec.ports), (None, range(8080, 8080)));
        for bad in ["0", "70000/tcp", "3000/dccp", "1.2.3:80", "[::1]:80"] {
            assert!(bad.parse::<HostSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn docker_forms() {
        let choose = |text: &str| text.parse::<PublishRequest>().unwrap();
        for (text, addr) in [
            ("::80", None),
            (":80", None),
            ("127.0.0.1::80", Some("127.0.0.1")),
            ("[2001:db8::1]::80", Some("2001:db8::1")),
        ] {
            let request = choose(text);
            assert_eq!(request.host_ports, None, "{text}");
            assert_eq!(request.ns_ports, range(80, 80), "{text}");
            assert_eq!(
                request.host_addr,
                addr.map(|a| a.parse().unwrap()),
                "{text}"
            );
            let err = publish(text).unwrap_err().to_string();
            assert!(err.contains("only `nsport add`"), "{text}: {err}");
            assert_eq!(choose(&request.to_string()), request, "{text}");
        }
        assert_eq!(
            choose("::80-82").with_host_start(40000).host_ports,
            range(40000, 40002)
        );
        // IPv4 ADDR:PORT is ADDR:PORT:PORT, as [IPv6]:PORT is.
        let spec = publish("127.0.0.1:8080").unwrap();
        assert_eq!(spec.host_addr, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(
            (spec.host_ports, spec.ns_ports),
            (range(8080, 8080), range(8080, 8080))
        );
        assert_eq!(publish("8080:80/TCP").unwrap().proto, Proto::Tcp);
        assert_eq!(publish("53/Udp").unwrap().proto, Proto::Udp);
        // SCTP is read as the other two are: in any case, as Docker reads it.
        assert_eq!(publish("8080:80/SCTP").unwrap().proto, Proto::Sctp);
        assert_eq!(publish("8080:80/Sctp").unwrap().proto, Proto::Sctp);
        let side: HostSpec = "127.0.0.1:3868/sctp".parse().unwrap();
        assert_eq!((side.ports, side.proto), (range(3868, 3868), Proto::Sctp));
        // rm's whole specs keep their namespace side.
        let side: HostSpec = "8080:9999".parse().unwrap();
        assert_eq!(side.ns_ports, Some(range(9999, 9999)));
        assert_eq!("8080".parse::<HostSpec>().unwrap().ns_ports, None);
        let side: HostSpec = "3000-3001:80-81".parse().unwrap();
        assert_eq!(side.ns_port_for(3001), Some(81));
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "3000:3000/tcp",
            "127.0.0.1:4000:3000/tcp",
            "1-2:3-4/udp",
            "[2001:db8::1]:8080:80/tcp",
            "8080:80/sctp",
        ] {
            assert_eq!(publish(text).unwrap().to_string(), text);
        }
    }
}

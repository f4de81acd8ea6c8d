//! Source prefixes: who may use a port published with `--allow-from`.
//!
//! A list belongs to a host port (its protocol and number): every mapping of the port
//! shares it. A list is kept in one canonical form, so that two lists that allow the same
//! sources compare equal and the kernel's interval sets never see overlapping elements:
//! sorted, without duplicates, and without a prefix that another one of the list holds.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// One source prefix: an address with no bits set past its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcePrefix {
    addr: IpAddr,
    len: u8,
}

/// Why a prefix is refused, with the value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("allowed source {0:?} is not an IPv4 or IPv6 address or prefix (ADDR or ADDR/LEN)")]
    Syntax(String),
    #[error("allowed source {value:?}: the prefix length must be at most {max}")]
    Length { value: String, max: u8 },
    #[error(
        "allowed source {value:?} has bits set past its length: write {canonical} for that network"
    )]
    HostBits { value: String, canonical: String },
    #[error(
        "allowed source {0:?}: an IPv4-mapped IPv6 address never arrives as a source; give the IPv4 prefix"
    )]
    Mapped(String),
}

impl SourcePrefix {
    /// A prefix from its parts; `None` when the length is too long or bits are set past it.
    pub fn new(addr: IpAddr, len: u8) -> Option<SourcePrefix> {
        let prefix = SourcePrefix { addr, len };
        (len <= prefix.max_len() && prefix.first() == addr).then_some(prefix)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    fn max_len(&self) -> u8 {
        if self.is_ipv6() { 128 } else { 32 }
    }

    /// The lowest address of the prefix.
    pub fn first(&self) -> IpAddr {
        self.with_host_bits(false)
    }

    /// The highest address of the prefix.
    pub fn last(&self) -> IpAddr {
        self.with_host_bits(true)
    }

    fn with_host_bits(&self, set: bool) -> IpAddr {
        let host_bits = u32::from(self.max_len() - self.len.min(self.max_len()));
        match self.addr {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shr(32 - host_bits).unwrap_or(0);
                let mask = if host_bits == 0 { 0 } else { mask };
                let bits = u32::from(v4);
                IpAddr::V4(Ipv4Addr::from(if set { bits | mask } else { bits & !mask }))
            }
            IpAddr::V6(v6) => {
                let mask = if host_bits == 0 {
                    0
                } else {
                    u128::MAX >> (128 - host_bits)
                };
                let bits = u128::from(v6);
                IpAddr::V6(Ipv6Addr::from(if set { bits | mask } else { bits & !mask }))
            }
        }
    }

    /// Whether `other` lies wholly inside this prefix.
    pub fn contains(&self, other: &SourcePrefix) -> bool {
        self.is_ipv6() == other.is_ipv6()
            && self.len <= other.len
            && SourcePrefix {
                addr: other.addr,
                len: self.len,
            }
            .first()
                == self.addr
    }

    /// The prefix an interval `first..=last` is, when it is one: how the kernel's
    /// interval sets give back what nsport put in.
    pub fn from_range(first: IpAddr, last: IpAddr) -> Option<SourcePrefix> {
        let max = if first.is_ipv6() { 128 } else { 32 };
        (0..=max)
            .filter_map(|len| SourcePrefix::new(first, len))
            .find(|prefix| prefix.last() == last)
    }
}

impl fmt::Display for SourcePrefix {
    /// `ADDR/LEN`, or the bare address for a single host.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len == self.max_len() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.len)
        }
    }
}

impl FromStr for SourcePrefix {
    type Err = PrefixError;

    /// `ADDR` (one host: /32 or /128) or `ADDR/LEN`; host bits must be clear, so that a
    /// typo like 10.1.2.3/8 is not silently taken for all of 10.0.0.0/8.
    fn from_str(value: &str) -> Result<SourcePrefix, PrefixError> {
        let syntax = || PrefixError::Syntax(value.to_string());
        let (addr, len) = match value.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (value, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        if let IpAddr::V6(v6) = addr
            && v6.to_ipv4_mapped().is_some()
        {
            return Err(PrefixError::Mapped(value.to_string()));
        }
        let max: u8 = if addr.is_ipv6() { 128 } else { 32 };
        let len = match len {
            None => u16::from(max),
            // Digits only: `u8::from_str` would take a leading `+`.
            Some(len)
                if !len.is_empty() && len.len() <= 3 && len.bytes().all(|b| b.is_ascii_digit()) =>
            {
                len.parse::<u16>().map_err(|_| syntax())?
            }
            Some(_) => return Err(syntax()),
        };
        if len > u16::from(max) {
            return Err(PrefixError::Length {
                value: value.to_string(),
                max,
            });
        }
        let len = len as u8;
        let prefix = SourcePrefix { addr, len };
        if prefix.first() != addr {
            let canonical = SourcePrefix {
                addr: prefix.first(),
                len,
            };
            return Err(PrefixError::HostBits {
                value: value.to_string(),
                canonical: format!("{}/{len}", canonical.addr),
            });
        }
        Ok(prefix)
    }
}

impl serde::Serialize for SourcePrefix {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SourcePrefix {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A list in its canonical form: sorted, IPv4 first, with no duplicate and no prefix that
/// another prefix of the list holds (the kernel refuses overlapping intervals).
pub fn canonical(prefixes: &[SourcePrefix]) -> Vec<SourcePrefix> {
    let mut sorted = prefixes.to_vec();
    // By family, then address, then the shorter prefix first: a prefix that holds others
    // comes right before them.
    sorted.sort_by_key(|p| (p.is_ipv6(), p.addr, p.len));
    sorted.dedup();
    let mut out: Vec<SourcePrefix> = Vec::with_capacity(sorted.len());
    for prefix in sorted {
        if out.last().is_some_and(|kept| kept.contains(&prefix)) {
            continue;
        }
        out.push(prefix);
    }
    out
}

/// Parses and canonicalises a list given as text, naming the first bad value. Values are
/// not trimmed: `add --allow-from` refuses "10.0.0.0/8 ", and an `apply` file must be
/// refused the same way rather than accepted by one entry point and not the other.
pub fn parse_list<S: AsRef<str>>(values: &[S]) -> Result<Vec<SourcePrefix>, PrefixError> {
    let parsed = values
        .iter()
        .map(|value| value.as_ref().parse())
        .collect::<Result<Vec<SourcePrefix>, PrefixError>>()?;
    Ok(canonical(&parsed))
}

/// A list as users read it: `10.0.0.0/8, 2001:db8::/32`.
pub fn list_label(prefixes: &[SourcePrefix]) -> String {
    prefixes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> SourcePrefix {
        text.parse().unwrap()
    }

    #[test]
    fn parses_addresses_and_prefixes() {
        assert_eq!(p("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(p("192.0.2.7").prefix_len(), 32);
        assert_eq!(p("192.0.2.7/32").to_string(), "192.0.2.7");
        assert_eq!(p("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(p("2001:db8::1").prefix_len(), 128);
        assert_eq!(p("0.0.0.0/0").last().to_string(), "255.255.255.255");
        assert_eq!(p("::/0").first().to_string(), "::");
    }

    #[test]
    fn refuses_with_the_value_named() {
        for (bad, says) in [
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("10.0.0.0/33", "at most 32"),
            ("2001:db8::/129", "at most 128"),
            ("example.org", "not an IPv4"),
            ("10.0.0.0/", "not an IPv4"),
            ("10.0.0.0/+8", "not an IPv4"),
            ("10.0.0.0/8/8", "not an IPv4"),
            ("", "not an IPv4"),
            ("::ffff:10.0.0.1", "IPv4-mapped"),
        ] {
            let error = bad.parse::<SourcePrefix>().unwrap_err().to_string();
            assert!(error.contains(says), "{bad}: {error}");
            assert!(error.contains(&format!("{bad:?}")), "{bad}: {error}");
        }
    }

    #[test]
    fn ranges_give_back_prefixes() {
        for text in [
            "10.0.0.0/8",
            "192.0.2.7",
            "0.0.0.0/0",
            "2001:db8::/32",
            "::/0",
        ] {
            let prefix = p(text);
            assert_eq!(
                SourcePrefix::from_range(prefix.first(), prefix.last()),
                Some(prefix)
            );
        }
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert_eq!(SourcePrefix::from_range(a, b), None);
    }

    #[test]
    fn canonical_lists_drop_what_another_prefix_holds() {
        let list = parse_list(&[
            "2001:db8::1",
            "10.1.0.0/16",
            "10.0.0.0/8",
            "192.0.2.1",
            "192.0.2.1/32",
            "2001:db8::/32",
        ])
        .unwrap();
        assert_eq!(list_label(&list), "10.0.0.0/8, 192.0.2.1, 2001:db8::/32");
        assert!(p("0.0.0.0/0").contains(&p("10.0.0.0/8")));
        assert!(!p("10.0.0.0/8").contains(&p("2001:db8::/32")));
        assert!(!p("10.0.0.0/16").contains(&p("10.1.0.0/16")));
    }
}

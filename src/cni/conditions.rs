//! portmap's `conditionsV4`/`conditionsV6`, in the forms that restrict by source or by
//! destination address, mapped onto nsport's source allow-lists and host addresses.
//!
//! portmap appends the conditions to its DNAT rules, as iptables arguments (the first
//! token starts with `-` or `!`) or as nftables expressions. nsport writes no per-mapping
//! rules, so it takes what it can express in its own terms and refuses the rest (CNI error
//! 2, unsupported field), saying what is supported:
//!
//! - a source: iptables `-s`/`--source CIDR[,CIDR…]` or `-m iprange --src-range A-B`;
//!   nftables `ip saddr X`, `ip6 saddr X` with X an address, a prefix, a range `A-B` or a
//!   set `{ X, … }`. The mappings' host ports get that allow-list.
//! - a destination: iptables `-d`/`--destination ADDR`, nftables `ip daddr ADDR` (one
//!   address): the mappings of that family are published on that host address only.
//!
//! The conditions of one family restrict that family only, as in portmap: with sources for
//! IPv4 alone, IPv6 sources stay unrestricted (the list gets `::/0`), and the other way.

use std::net::IpAddr;

use serde_json::Value;

use super::config::{Family, PortMapping, quote};
use super::{CniError, code, fail};
use crate::model::{SourcePrefix, canonical};

/// What the conditions ask for.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Conditions {
    /// The sources that may use the mappings' host ports; empty for every source.
    pub allow_from: Vec<SourcePrefix>,
    /// The host address of each family's mappings, when a condition names one.
    pub host_v4: Option<IpAddr>,
    pub host_v6: Option<IpAddr>,
}

const SUPPORTED: &str = "nsport supports conditions on source or destination addresses only: \
    iptables -s/--source CIDR[,CIDR...], -m iprange --src-range A-B, -d/--destination ADDR; \
    nftables ip/ip6 saddr ADDR|CIDR|A-B|{ ... }, ip/ip6 daddr ADDR";

/// Reads both fields of the configuration; absent, null or empty means no condition.
pub(super) fn conditions(config: &Value) -> Result<Conditions, CniError> {
    let mut out = Conditions::default();
    let mut sources: [Option<Vec<SourcePrefix>>; 2] = [None, None];
    for (index, (field, v6)) in [("conditionsV4", false), ("conditionsV6", true)]
        .into_iter()
        .enumerate()
    {
        let tokens = match config.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text.as_str()),
                    other => Err(unsupported(field, &other.to_string())),
                })
                .collect::<Result<Vec<&str>, CniError>>()?,
            Some(other) => {
                return Err(fail(
                    code::INVALID_CONFIG,
                    format!("{field} {other} is not an array of strings"),
                    "",
                ));
            }
        };
        if tokens.first().is_none_or(|first| first.is_empty()) {
            continue;
        }
        let parsed = if tokens[0].starts_with('-') || tokens[0].starts_with('!') {
            iptables(field, v6, &tokens)?
        } else {
            nftables(field, v6, &tokens)?
        };
        if let Some(host) = parsed.destination {
            match v6 {
                false => out.host_v4 = Some(host),
                true => out.host_v6 = Some(host),
            }
        }
        sources[index] = parsed.sources;
    }
    // A family without a source condition stays open to every source of that family.
    if sources.iter().any(Option::is_some) {
        let every = ["0.0.0.0/0", "::/0"].map(|p| p.parse::<SourcePrefix>().expect("a prefix"));
        let mut list = Vec::new();
        for (family, every) in sources.into_iter().zip(every) {
            list.extend(family.unwrap_or_else(|| vec![every]));
        }
        out.allow_from = canonical(&list);
    }
    Ok(out)
}

/// Publishes each port mapping of a family that a destination condition names on that
/// host address: a mapping for both families becomes one per family. A mapping whose
/// `hostIP` is another address of that family contradicts the condition.
pub(super) fn apply_destinations(
    conditions: &Conditions,
    ports: &mut Vec<PortMapping>,
) -> Result<(), CniError> {
    if conditions.host_v4.is_none() && conditions.host_v6.is_none() {
        return Ok(());
    }
    let mut out = Vec::with_capacity(ports.len() * 2);
    for port in ports.drain(..) {
        let families = match (port.host_addr, port.family) {
            (Some(addr), _) => vec![Family::of(addr)],
            (None, Some(family)) => vec![family],
            (None, None) => vec![Family::V4, Family::V6],
        };
        for family in families {
            let (field, wanted) = match family {
                Family::V4 => ("conditionsV4", conditions.host_v4),
                Family::V6 => ("conditionsV6", conditions.host_v6),
            };
            let host_addr = match (port.host_addr, wanted) {
                (Some(given), Some(wanted)) if given != wanted => {
                    return Err(fail(
                        code::INVALID_CONFIG,
                        format!(
                            "{field} asks for destination {wanted}, but a port mapping of host \
                             port {} has hostIP {given}",
                            port.host_port
                        ),
                        "",
                    ));
                }
                (given, wanted) => wanted.or(given),
            };
            out.push(PortMapping {
                host_addr,
                family: Some(family),
                ..port.clone()
            });
        }
    }
    *ports = out;
    Ok(())
}

/// What one field's conditions say.
#[derive(Default)]
struct Parsed {
    sources: Option<Vec<SourcePrefix>>,
    destination: Option<IpAddr>,
}

fn unsupported(field: &str, what: &str) -> CniError {
    fail(
        code::UNSUPPORTED_FIELD,
        format!("{field}: {} is not supported by nsport", quote(what)),
        SUPPORTED,
    )
}

/// iptables arguments: `-s`, `--source`, `-d`, `--destination`, `-m iprange --src-range`.
fn iptables(field: &str, v6: bool, tokens: &[&str]) -> Result<Parsed, CniError> {
    let mut parsed = Parsed::default();
    let mut at = 0;
    while at < tokens.len() {
        let token = tokens[at];
        let value = || {
            tokens
                .get(at + 1)
                .copied()
                .ok_or_else(|| unsupported(field, &format!("{token} without a value")))
        };
        match token {
            "-s" | "--source" | "--src" => {
                for item in value()?.split(',') {
                    add_sources(&mut parsed, field, v6, item)?;
                }
                at += 2;
            }
            "-d" | "--destination" | "--dst" => {
                set_destination(&mut parsed, field, v6, value()?)?;
                at += 2;
            }
            "-m" if value()? == "iprange" => at += 2,
            "--src-range" => {
                add_sources(&mut parsed, field, v6, value()?)?;
                at += 2;
            }
            other => return Err(unsupported(field, other)),
        }
    }
    Ok(parsed)
}

/// nftables expressions: `ip saddr …`, `ip daddr …` (`ip6` for IPv6), one or more in each
/// string.
fn nftables(field: &str, v6: bool, expressions: &[&str]) -> Result<Parsed, CniError> {
    let mut parsed = Parsed::default();
    let family = if v6 { "ip6" } else { "ip" };
    for expression in expressions {
        // Braces and commas become words of their own.
        let spaced = expression
            .replace('{', " { ")
            .replace('}', " } ")
            .replace(',', " , ");
        let words: Vec<&str> = spaced.split_whitespace().collect();
        let mut at = 0;
        while at < words.len() {
            let (Some(&which), Some(&value)) = (words.get(at + 1), words.get(at + 2)) else {
                return Err(unsupported(field, expression));
            };
            // A negation (`!=`) or another operator is not an address set nsport can take.
            let operator =
                !value.starts_with(|c: char| c.is_ascii_hexdigit() || c == ':' || c == '{');
            if words[at] != family || !matches!(which, "saddr" | "daddr") || operator {
                return Err(unsupported(field, expression));
            }
            // `{ A, B }` or one value.
            let values: Vec<&str> = if value == "{" {
                let end = words[at + 2..]
                    .iter()
                    .position(|w| *w == "}")
                    .map(|i| at + 2 + i)
                    .ok_or_else(|| unsupported(field, expression))?;
                let items = words[at + 3..end].iter().copied().filter(|w| *w != ",");
                let items: Vec<&str> = items.collect();
                at = end + 1;
                items
            } else {
                at += 3;
                vec![value]
            };
            for value in values {
                match which {
                    "saddr" => add_sources(&mut parsed, field, v6, value)?,
                    _ => set_destination(&mut parsed, field, v6, value)?,
                }
            }
        }
    }
    Ok(parsed)
}

/// A source: an address, a prefix, or a range `A-B` (as the prefixes that cover it).
fn add_sources(parsed: &mut Parsed, field: &str, v6: bool, text: &str) -> Result<(), CniError> {
    let prefixes = match text.split_once('-') {
        Some((first, last)) => {
            let (first, last) = match (first.parse::<IpAddr>(), last.parse::<IpAddr>()) {
                (Ok(first), Ok(last)) if first.is_ipv6() == last.is_ipv6() && first <= last => {
                    (first, last)
                }
                _ => return Err(bad_value(field, text)),
            };
            range_prefixes(first, last)
        }
        None => vec![
            text.parse::<SourcePrefix>()
                .map_err(|error| bad_value_because(field, &error.to_string()))?,
        ],
    };
    if prefixes.iter().any(|p| p.is_ipv6() != v6) {
        return Err(wrong_family(field, text));
    }
    parsed.sources.get_or_insert_with(Vec::new).extend(prefixes);
    Ok(())
}

/// A destination: one host address, which the mappings of this family are published on.
fn set_destination(parsed: &mut Parsed, field: &str, v6: bool, text: &str) -> Result<(), CniError> {
    let prefix = text
        .parse::<SourcePrefix>()
        .map_err(|error| bad_value_because(field, &error.to_string()))?;
    if prefix.is_ipv6() != v6 {
        return Err(wrong_family(field, text));
    }
    let single = if v6 { 128 } else { 32 };
    if prefix.prefix_len() != single {
        return Err(unsupported(
            field,
            &format!("destination {text} (only one host address)"),
        ));
    }
    match parsed.destination {
        Some(other) if other != prefix.addr() => Err(unsupported(
            field,
            &format!("two destinations {other} and {text}"),
        )),
        _ => {
            parsed.destination = Some(prefix.addr());
            Ok(())
        }
    }
}

fn bad_value(field: &str, text: &str) -> CniError {
    fail(
        code::INVALID_CONFIG,
        format!(
            "{field}: {} is not an address, prefix or range",
            quote(text)
        ),
        "",
    )
}

fn bad_value_because(field: &str, why: &str) -> CniError {
    fail(code::INVALID_CONFIG, format!("{field}: {why}"), "")
}

fn wrong_family(field: &str, text: &str) -> CniError {
    fail(
        code::INVALID_CONFIG,
        format!("{field}: {} is of the other address family", quote(text)),
        "",
    )
}

/// The fewest prefixes that cover `first..=last` exactly.
fn range_prefixes(first: IpAddr, last: IpAddr) -> Vec<SourcePrefix> {
    let (bits, mut start, end) = match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            (32u32, u128::from(u32::from(a)), u128::from(u32::from(b)))
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => (128, u128::from(a), u128::from(b)),
        _ => return Vec::new(),
    };
    let addr = |value: u128| -> IpAddr {
        if bits == 32 {
            IpAddr::V4((value as u32).into())
        } else {
            IpAddr::V6(value.into())
        }
    };
    let mut out = Vec::new();
    loop {
        // The largest block that starts at `start` (aligned) and ends by `end`.
        let mut size_bits = if start == 0 {
            bits
        } else {
            start.trailing_zeros().min(bits)
        };
        while size_bits > 0 {
            let span = if size_bits == 128 {
                u128::MAX
            } else {
                (1u128 << size_bits) - 1
            };
            if start
                .checked_add(span)
                .is_some_and(|block_end| block_end <= end)
            {
                break;
            }
            size_bits -= 1;
        }
        let len = (bits - size_bits) as u8;
        out.push(SourcePrefix::new(addr(start), len).expect("an aligned block"));
        let span = if size_bits == 128 {
            u128::MAX
        } else {
            (1u128 << size_bits) - 1
        };
        match start.checked_add(span) {
            Some(block_end) if block_end < end => start = block_end + 1,
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::list_label;

    fn list(config: Value) -> String {
        list_label(&conditions(&config).unwrap().allow_from)
    }

    #[test]
    fn sources_in_both_syntaxes() {
        assert_eq!(
            list(json!({"conditionsV4": ["-s", "10.0.0.0/8,192.0.2.7"]})),
            "10.0.0.0/8, 192.0.2.7, ::/0"
        );
        assert_eq!(
            list(
                json!({"conditionsV4": ["ip saddr { 10.0.0.0/8, 192.0.2.7 }"],
                        "conditionsV6": ["ip6 saddr 2001:db8::/32"]})
            ),
            "10.0.0.0/8, 192.0.2.7, 2001:db8::/32"
        );
        assert_eq!(
            list(json!({"conditionsV4": ["-m", "iprange", "--src-range", "192.0.2.1-192.0.2.6"]})),
            "192.0.2.1, 192.0.2.2/31, 192.0.2.4/31, 192.0.2.6, ::/0"
        );
        assert_eq!(
            list(json!({"conditionsV6": ["ip6 saddr 2001:db8::-2001:db8::ffff"]})),
            "0.0.0.0/0, 2001:db8::/112"
        );
        assert_eq!(list(json!({"conditionsV4": []})), "");
        assert_eq!(list(json!({"conditionsV4": null})), "");
    }

    #[test]
    fn a_destination_is_the_host_address() {
        let parsed = conditions(&json!({"conditionsV4": ["-d", "192.0.2.1"],
                                        "conditionsV6": ["ip6 daddr 2001:db8::1"]}))
        .unwrap();
        assert_eq!(parsed.host_v4, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(parsed.host_v6, Some("2001:db8::1".parse().unwrap()));
        assert!(parsed.allow_from.is_empty());
    }

    #[test]
    fn the_rest_is_refused_saying_what_is_supported() {
        for (config, names) in [
            (json!({"conditionsV4": ["!", "-s", "10.0.0.0/8"]}), "\"!\""),
            (json!({"conditionsV4": ["-p", "tcp"]}), "\"-p\""),
            (
                json!({"conditionsV4": ["-m", "comment", "--comment", "x"]}),
                "\"-m\"",
            ),
            (
                json!({"conditionsV4": ["-d", "192.0.2.0/24"]}),
                "only one host address",
            ),
            (
                json!({"conditionsV4": ["ip saddr != 10.0.0.0/8"]}),
                "ip saddr != 10.0.0.0/8",
            ),
            (json!({"conditionsV4": ["tcp dport 80"]}), "tcp dport 80"),
            (json!({"conditionsV4": ["ip6 saddr ::1"]}), "ip6 saddr ::1"),
            (json!({"conditionsV4": ["-s"]}), "-s without a value"),
            (json!({"conditionsV4": [1]}), "1"),
        ] {
            let error = conditions(&config).unwrap_err();
            assert_eq!(
                error.code,
                code::UNSUPPORTED_FIELD,
                "{config}: {}",
                error.msg
            );
            assert!(error.msg.contains(names), "{config}: {}", error.msg);
            assert!(error.msg.contains("conditionsV4"), "{}", error.msg);
            assert!(error.details.contains("--src-range"), "{}", error.details);
        }
        for (config, names) in [
            (json!({"conditionsV4": ["-s", "10.1.2.3/8"]}), "10.0.0.0/8"),
            (
                json!({"conditionsV4": ["-s", "2001:db8::/32"]}),
                "other address family",
            ),
            (
                json!({"conditionsV4": ["-s", "10.0.0.9-10.0.0.1"]}),
                "10.0.0.9-10.0.0.1",
            ),
            (json!({"conditionsV4": "-s 10.0.0.0/8"}), "not an array"),
        ] {
            let error = conditions(&config).unwrap_err();
            assert_eq!(error.code, code::INVALID_CONFIG, "{config}: {}", error.msg);
            assert!(error.msg.contains(names), "{config}: {}", error.msg);
        }
    }

    #[test]
    fn destinations_split_a_mapping_by_family() {
        let port = PortMapping {
            host_port: 8080,
            container_port: 80,
            proto: crate::spec::Proto::Tcp,
            host_addr: None,
            family: None,
        };
        let parsed = conditions(&json!({"conditionsV4": ["-d", "192.0.2.1"]})).unwrap();
        let mut ports = vec![port.clone()];
        apply_destinations(&parsed, &mut ports).unwrap();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].host_addr, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(
            (ports[1].host_addr, ports[1].family),
            (None, Some(Family::V6))
        );
        let other = PortMapping {
            host_addr: Some("198.51.100.1".parse().unwrap()),
            ..port
        };
        let error = apply_destinations(&parsed, &mut vec![other]).unwrap_err();
        assert_eq!(error.code, code::INVALID_CONFIG);
        assert!(error.msg.contains("198.51.100.1"), "{}", error.msg);
    }

    #[test]
    fn ranges_become_the_fewest_prefixes() {
        let text =
            |a: &str, b: &str| list_label(&range_prefixes(a.parse().unwrap(), b.parse().unwrap()));
        assert_eq!(text("0.0.0.0", "255.255.255.255"), "0.0.0.0/0");
        assert_eq!(text("10.0.0.0", "10.0.0.255"), "10.0.0.0/24");
        assert_eq!(text("10.0.0.255", "10.0.1.0"), "10.0.0.255, 10.0.1.0");
        assert_eq!(
            text("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            "::/0"
        );
        assert_eq!(text("192.0.2.7", "192.0.2.7"), "192.0.2.7");
    }
}

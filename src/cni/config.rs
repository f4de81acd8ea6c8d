//! Reading the network configuration and the `CNI_*` environment: what the spec defines is
//! validated where ADD needs it, and every refusal names the field and the value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;

use super::{CniError, SUPPORTED_VERSIONS, code, fail};
use crate::spec::Proto;

/// The longest value quoted in an error message; the rest is cut.
const QUOTE_MAX: usize = 80;

/// A value for an error message: debug-quoted (so control bytes show) and bounded.
pub(super) fn quote(text: &str) -> String {
    let mut cut = text;
    if cut.len() > QUOTE_MAX {
        let mut end = QUOTE_MAX;
        while !cut.is_char_boundary(end) {
            end -= 1;
        }
        cut = &cut[..end];
    }
    let quoted = format!("{cut:?}");
    if cut.len() < text.len() {
        format!("{quoted}… ({} bytes)", text.len())
    } else {
        quoted
    }
}

/// The configuration's `cniVersion`, which must be one nsport speaks.
pub(super) fn version(config: &Value) -> Result<&str, CniError> {
    let version = match config.get("cniVersion") {
        None | Some(Value::Null) => {
            return Err(fail(
                code::INVALID_CONFIG,
                "the configuration has no cniVersion",
                "",
            ));
        }
        Some(Value::String(version)) => version.as_str(),
        Some(other) => {
            return Err(fail(
                code::INVALID_CONFIG,
                format!("cniVersion {other} is not a string"),
                "",
            ));
        }
    };
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(fail(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {} is not supported", quote(version)),
            format!("nsport supports {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    Ok(version)
}

/// The spec's form of a network name: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn is_spec_name(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The network's `name`, in the spec's form (it is recorded in each mapping's comment).
pub(super) fn network_name(config: &Value) -> Result<&str, CniError> {
    match config.get("name") {
        None | Some(Value::Null) => Err(fail(
            code::INVALID_CONFIG,
            "the configuration has no name",
            "",
        )),
        Some(Value::String(name)) if is_spec_name(name) => Ok(name),
        Some(other) => Err(fail(
            code::INVALID_CONFIG,
            format!("invalid network name {}", quote(&other.to_string())),
            "a name starts with a letter or digit followed by letters, digits, '_', '.' or '-'",
        )),
    }
}

/// The name of a network for DEL, which must not fail: whatever `name` holds, if it can be
/// one.
pub(super) fn network_name_lenient(config: Option<&Value>) -> Option<&str> {
    config?
        .get("name")?
        .as_str()
        .filter(|name| is_spec_name(name))
}

/// Validates `CNI_CONTAINERID` in the spec's form (the same as a network name).
pub(super) fn container_id(id: &str) -> Result<(), CniError> {
    if is_spec_name(id) {
        Ok(())
    } else {
        Err(fail(
            code::INVALID_ENVIRONMENT,
            format!("invalid CNI_CONTAINERID {}", quote(id)),
            "a container ID starts with a letter or digit followed by letters, digits, '_', '.' or '-'",
        ))
    }
}

/// Validates `CNI_IFNAME`: a Linux interface name.
pub(super) fn ifname(name: &str) -> Result<(), CniError> {
    let valid = !name.is_empty()
        && name.len() <= crate::error::MAX_IFNAME
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b"/:\"\\\xa0".contains(&b) || b.is_ascii_whitespace() || b.is_ascii_control());
    if valid {
        Ok(())
    } else {
        Err(fail(
            code::INVALID_ENVIRONMENT,
            format!("invalid CNI_IFNAME {}", quote(name)),
            "an interface name has 1 to 15 bytes, without '/', ':' or spaces",
        ))
    }
}

/// Whether the network allows direct access to its pods' addresses (the default, as
/// portmap leaves it), or asks for the CLI's protection with `"directAccess": "deny"`.
pub(super) fn allow_direct(config: &Value) -> Result<bool, CniError> {
    match config.get(DIRECT_ACCESS) {
        None | Some(Value::Null) => Ok(true),
        Some(Value::String(value)) if value == "allow" => Ok(true),
        Some(Value::String(value)) if value == "deny" => Ok(false),
        Some(other) => Err(fail(
            code::INVALID_CONFIG,
            format!("invalid {DIRECT_ACCESS} {other}"),
            format!("{DIRECT_ACCESS} is \"allow\" (the default) or \"deny\""),
        )),
    }
}

/// The plugin configuration key that asks for protection from direct access.
pub const DIRECT_ACCESS: &str = "directAccess";

/// One entry of `runtimeConfig.portMappings`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
    /// `None` for every address (absent, empty, `0.0.0.0` or `::`), with the family it
    /// is limited to when one of the last two says so.
    pub host_addr: Option<IpAddr>,
    pub family: Option<Family>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Family {
        if addr.is_ipv6() {
            Family::V6
        } else {
            Family::V4
        }
    }
}

/// `runtimeConfig.portMappings`, each entry checked; an error names the entry and field.
pub(super) fn port_mappings(config: &Value) -> Result<Vec<PortMapping>, CniError> {
    let entries = match config.pointer("/runtimeConfig/portMappings") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(entries)) => entries,
        Some(other) => {
            return Err(fail(
                code::INVALID_CONFIG,
                format!("runtimeConfig.portMappings {other} is not a list"),
                "",
            ));
        }
    };
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| port_mapping(i, entry))
        .collect()
}

fn port_mapping(i: usize, entry: &Value) -> Result<PortMapping, CniError> {
    let bad = |field: &str, value: &Value, why: &str| {
        fail(
            code::INVALID_CONFIG,
            format!("runtimeConfig.portMappings[{i}].{field} {value} {why}"),
            "",
        )
    };
    let port = |field: &str| -> Result<u16, CniError> {
        let value = entry.get(field).unwrap_or(&Value::Null);
        match value.as_u64() {
            Some(port) if (1..=65535).contains(&port) => Ok(port as u16),
            _ => Err(bad(field, value, "is not a port from 1 to 65535")),
        }
    };
    let host_port = port("hostPort")?;
    let container_port = port("containerPort")?;
    let proto = match entry.get("protocol") {
        None | Some(Value::Null) => Proto::Tcp,
        Some(value) => match value.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("" | "tcp") => Proto::Tcp,
            Some("udp") => Proto::Udp,
            Some("sctp") => Proto::Sctp,
            _ => {
                return Err(bad(
                    "protocol",
                    value,
                    "is not supported: nsport publishes tcp, udp and sctp",
                ));
            }
        },
    };
    let (host_addr, family) = match entry.get("hostIP") {
        None | Some(Value::Null) => (None, None),
        Some(value) => match value.as_str() {
            Some("") => (None, None),
            Some(text) => match text.parse::<IpAddr>() {
                Ok(addr) if addr.is_unspecified() => (None, Some(Family::of(addr))),
                Ok(addr) => (Some(addr), Some(Family::of(addr))),
                Err(_) => return Err(bad("hostIP", value, "is not an IP address")),
            },
            None => return Err(bad("hostIP", value, "is not an IP address")),
        },
    };
    Ok(PortMapping {
        host_port,
        container_port,
        proto,
        host_addr,
        family,
    })
}

/// The container's first IPv4 and first IPv6 address in `prevResult`, as portmap takes
/// them: of those on the container's interface when the result says which interface an
/// address is on.
pub(super) fn container_ips(
    config: &Value,
    ifname: &str,
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), CniError> {
    let result = config.get("prevResult").ok_or_else(|| {
        fail(
            code::INVALID_CONFIG,
            "portMappings need a prevResult with the container's addresses",
            "",
        )
    })?;
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let ips = result
        .get("ips")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let (mut v4, mut v6) = (None, None);
    for (i, ip) in ips.iter().enumerate() {
        let on_container = match (ip.get("interface").and_then(Value::as_u64), interfaces) {
            (Some(index), Some(interfaces)) => interfaces.get(index as usize).is_none_or(|i| {
                i.get("sandbox")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
                    && i.get("name")
                        .and_then(Value::as_str)
                        .is_none_or(|n| n == ifname)
            }),
            _ => true,
        };
        let address = ip.get("address").unwrap_or(&Value::Null);
        let addr = address
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse::<IpAddr>().ok())
            .ok_or_else(|| {
                fail(
                    code::INVALID_CONFIG,
                    format!("prevResult.ips[{i}].address {address} is not an address in CIDR form"),
                    "",
                )
            })?;
        match addr {
            IpAddr::V4(a) if on_container => {
                v4.get_or_insert(a);
            }
            IpAddr::V6(a) if on_container => {
                v6.get_or_insert(a);
            }
            _ => {}
        }
    }
    Ok((v4, v6))
}

/// GC's `cni.dev/valid-attachments`: `(containerID, ifname)` pairs; a missing or null
/// list (what CRI-O sends for a network without pods) is empty.
pub(super) fn valid_attachments(config: &Value) -> Result<Vec<(String, String)>, CniError> {
    const KEY: &str = "cni.dev/valid-attachments";
    let entries = match config.get(KEY) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(entries)) => entries,
        Some(other) => {
            return Err(fail(
                code::INVALID_CONFIG,
                format!("{KEY} {} is not a list", quote(&other.to_string())),
                "",
            ));
        }
    };
    Ok(entries
        .iter()
        .map(|a| {
            let field = |name| {
                a.get(name)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            (field("containerID"), field("ifname"))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn first_address_of_each_family_on_the_container_interface() {
        let config = json!({"prevResult": {
            "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [{"interface": 0, "address": "10.22.0.1/24"}, {"interface": 2, "address": "10.22.0.2/24"},
                    {"interface": 2, "address": "10.23.0.2/24"}, {"address": "2001:db8::5/64"},
                    {"address": "2001:db8::6/64"}]
        }});
        let (v4, v6) = container_ips(&config, "eth0").unwrap();
        assert_eq!(v4, Some("10.22.0.2".parse().unwrap()));
        assert_eq!(v6, Some("2001:db8::5".parse().unwrap()));
    }

    #[test]
    fn refusals_name_the_field_and_value() {
        let cases = [
            (
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}}),
                "portMappings[0].hostPort 0",
            ),
            (
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 70000}]}}),
                "containerPort 70000",
            ),
            (
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "dccp"}]}}),
                "protocol \"dccp\"",
            ),
            (
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "hostIP": "x"}]}}),
                "hostIP \"x\"",
            ),
        ];
        for (config, expected) in cases {
            let error = port_mappings(&config).unwrap_err();
            assert_eq!(error.code, code::INVALID_CONFIG);
            assert!(error.msg.contains(expected), "{}", error.msg);
        }
        let error = allow_direct(&json!({"directAccess": "maybe"})).unwrap_err();
        assert!(error.msg.contains("directAccess") && error.msg.contains("maybe"));
        assert!(allow_direct(&json!({})).unwrap());
        assert!(!allow_direct(&json!({"directAccess": "deny"})).unwrap());
    }

    #[test]
    fn sctp_is_read_as_tcp_and_udp_are() {
        for protocol in ["sctp", "SCTP", "Sctp"] {
            let config = json!({"runtimeConfig": {"portMappings": [
                {"hostPort": 3868, "containerPort": 3869, "protocol": protocol}]}});
            let ports = port_mappings(&config).unwrap();
            assert_eq!(ports.len(), 1);
            assert_eq!(
                (ports[0].proto, ports[0].host_port, ports[0].container_port),
                (Proto::Sctp, 3868, 3869),
                "{protocol}"
            );
        }
    }

    #[test]
    fn names_in_the_spec_form() {
        for good in ["net", "k8s-pod-network", "a.b_c-1"] {
            assert!(is_spec_name(good), "{good}");
        }
        for bad in ["", "-x", "a b", "a/b", "a=b", "ü"] {
            assert!(!is_spec_name(bad), "{bad}");
        }
        assert!(ifname("eth0").is_ok());
        assert!(ifname("a-very-long-ifname").is_err());
        assert!(
            container_id("abc def")
                .unwrap_err()
                .msg
                .contains("\"abc def\"")
        );
        assert!(quote(&"x".repeat(500)).contains("500 bytes"));
    }

    #[test]
    fn null_or_missing_valid_attachments_are_empty() {
        assert!(valid_attachments(&json!({})).unwrap().is_empty());
        assert!(
            valid_attachments(&json!({"cni.dev/valid-attachments": null}))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            valid_attachments(
                &json!({"cni.dev/valid-attachments": [{"containerID": "c", "ifname": "eth0"}]})
            )
            .unwrap(),
            [("c".to_string(), "eth0".to_string())]
        );
    }
}

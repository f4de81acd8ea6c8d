//! nsport as a CNI chained plugin, in place of `portmap`.
//!
//! The runtime (containerd, CRI-O, nerdctl, Podman in CNI mode) runs the `nsport` binary
//! with `CNI_COMMAND` set, the network configuration on stdin and the container in the
//! `CNI_*` environment. The `portMappings` capability (`runtimeConfig.portMappings`) says
//! what to publish; the container's addresses come from `prevResult`, which ADD passes on
//! unchanged. Each mapping records the container ID and interface, so that DEL removes
//! exactly that container's mappings and GC those of containers the runtime no longer has.

use std::collections::HashMap;
use std::net::IpAddr;

use serde_json::{Value, json};

use crate::engine::{resolve, update};
use crate::netns::Namespace;
use crate::ruleset::Mapping;
use crate::ruleset::metadata::same_name;
use crate::spec::Proto;
use crate::{Error, Target, list};

/// The protocol versions nsport speaks.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A CNI error, as the spec's error JSON on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

/// The spec's well-known error codes, and nsport's own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    /// nsport's: a host port another mapping holds.
    pub const PORT_CONFLICT: u32 = 100;
    /// nsport's: CHECK found a mapping missing.
    pub const MAPPING_MISSING: u32 = 101;
}

fn fail(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError {
        code,
        msg: msg.into(),
        details: details.into(),
    }
}

impl From<Error> for CniError {
    fn from(error: Error) -> CniError {
        let code = match &error {
            Error::Conflict { .. } | Error::HostPortInUse { .. } => code::PORT_CONFLICT,
            error if error.is_usage() => code::INVALID_CONFIG,
            _ => code::IO_FAILURE,
        };
        let details = std::iter::successors(std::error::Error::source(&error), |e| e.source())
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(": ");
        fail(code, error.to_string(), details)
    }
}

impl CniError {
    /// The error JSON the spec asks for.
    pub fn to_json(&self, version: &str) -> String {
        json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
        .to_string()
    }
}

/// One entry of `runtimeConfig.portMappings`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortMapping {
    host_port: u16,
    container_port: u16,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default, rename = "hostIP")]
    host_ip: Option<String>,
}

/// The invocation: command, environment and configuration.
pub struct Invocation<'a> {
    pub command: &'a str,
    pub env: &'a HashMap<String, String>,
    pub config: &'a str,
}

/// The network configuration's version, for answering in kind.
pub fn version_of(config: &str) -> String {
    serde_json::from_str::<Value>(config)
        .ok()
        .and_then(|c| c.get("cniVersion")?.as_str().map(String::from))
        .unwrap_or_else(|| "1.1.0".to_string())
}

/// Runs one CNI command; `Ok` holds what to print on stdout (possibly nothing).
pub fn run(invocation: &Invocation) -> Result<String, CniError> {
    if invocation.command == "VERSION" {
        return Ok(json!({
            "cniVersion": version_of(invocation.config),
            "supportedVersions": SUPPORTED_VERSIONS,
        })
        .to_string());
    }
    let config: Value = serde_json::from_str(invocation.config).map_err(|e| {
        fail(
            code::DECODE_FAILURE,
            "cannot decode the network configuration",
            e.to_string(),
        )
    })?;
    let version = config
        .get("cniVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            fail(
                code::INVALID_CONFIG,
                "the configuration has no cniVersion",
                "",
            )
        })?;
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(fail(
            code::INCOMPATIBLE_VERSION,
            format!("CNI version {version} is not supported"),
            format!("nsport supports {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    for field in ["conditionsV4", "conditionsV6"] {
        if config.get(field).is_some_and(|c| !c.is_null()) {
            return Err(fail(
                code::UNSUPPORTED_FIELD,
                format!("{field} is not supported by nsport"),
                "nsport publishes with one table and no per-mapping iptables conditions; \
                 filter in a table of your own instead",
            ));
        }
    }
    let env = |name: &str| invocation.env.get(name).filter(|v| !v.is_empty());
    match invocation.command {
        "ADD" | "DEL" | "CHECK" => {
            let container = env("CNI_CONTAINERID")
                .ok_or_else(|| fail(code::INVALID_ENVIRONMENT, "CNI_CONTAINERID is not set", ""))?;
            let ifname = env("CNI_IFNAME")
                .ok_or_else(|| fail(code::INVALID_ENVIRONMENT, "CNI_IFNAME is not set", ""))?;
            let container = Container {
                id: container,
                ifname,
                netns: env("CNI_NETNS").map(String::as_str),
            };
            match invocation.command {
                "ADD" => add(&config, &container),
                "DEL" => del(&container).map(|()| String::new()),
                _ => check(&config, &container).map(|()| String::new()),
            }
        }
        "GC" => gc(&config).map(|()| String::new()),
        "STATUS" => Ok(String::new()),
        other => Err(fail(
            code::INVALID_ENVIRONMENT,
            format!("unknown CNI_COMMAND {other:?}"),
            "",
        )),
    }
}

struct Container<'a> {
    id: &'a str,
    ifname: &'a str,
    netns: Option<&'a str>,
}

impl Container<'_> {
    fn owns(&self, mapping: &Mapping) -> bool {
        // Long IDs (every runtime's 64 hex digits) are recorded as digests.
        mapping
            .container
            .as_deref()
            .is_some_and(|id| same_name(id, self.id))
            && (mapping.container_ifname.as_deref()).is_some_and(|i| same_name(i, self.ifname))
    }
}

fn port_mappings(config: &Value) -> Result<Vec<PortMapping>, CniError> {
    match config.pointer("/runtimeConfig/portMappings") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(value) => serde_json::from_value(value.clone()).map_err(|e| {
            fail(
                code::INVALID_CONFIG,
                "invalid runtimeConfig.portMappings",
                e.to_string(),
            )
        }),
    }
}

/// The container's addresses from `prevResult`: those on its interface in its namespace
/// when the result says which interface an address is on.
fn container_ips(config: &Value, container: &Container) -> Result<Vec<IpAddr>, CniError> {
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
        .cloned()
        .unwrap_or_default();
    let mut found = Vec::new();
    for ip in ips {
        let on_container = match (ip.get("interface").and_then(Value::as_u64), interfaces) {
            (Some(index), Some(interfaces)) => interfaces.get(index as usize).is_none_or(|i| {
                i.get("sandbox")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
                    && i.get("name")
                        .and_then(Value::as_str)
                        .is_none_or(|n| n == container.ifname)
            }),
            _ => true,
        };
        let address = ip
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let addr = address.split('/').next().unwrap_or_default();
        match addr.parse::<IpAddr>() {
            Ok(addr) if on_container => found.push(addr),
            Ok(_) => {}
            Err(_) => {
                return Err(fail(
                    code::INVALID_CONFIG,
                    format!("invalid address {address:?} in prevResult"),
                    "",
                ));
            }
        }
    }
    Ok(found)
}

/// The mappings the configuration asks for this container: each port mapping on each
/// container address of its host address's family (both when it names none).
fn desired(config: &Value, container: &Container) -> Result<Vec<Mapping>, CniError> {
    let ports = port_mappings(config)?;
    if ports.is_empty() {
        return Ok(Vec::new());
    }
    let ips = container_ips(config, container)?;
    let inode = container
        .netns
        .and_then(|path| Namespace::open(path).ok())
        .map(|ns| ns.inode);
    let mut vias: HashMap<IpAddr, String> = HashMap::new();
    let mut mappings = Vec::new();
    for port in &ports {
        let proto = match port
            .protocol
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("") | Some("tcp") => Proto::Tcp,
            Some("udp") => Proto::Udp,
            Some(other) => {
                return Err(fail(
                    code::INVALID_CONFIG,
                    format!("unsupported protocol {other:?}"),
                    "nsport publishes tcp and udp",
                ));
            }
        };
        if port.host_port == 0 || port.container_port == 0 {
            return Err(fail(code::INVALID_CONFIG, "port 0 cannot be published", ""));
        }
        let host_addr: Option<IpAddr> =
            match port.host_ip.as_deref() {
                None | Some("") => None,
                Some(text) => Some(text.parse().map_err(|_| {
                    fail(code::INVALID_CONFIG, format!("invalid hostIP {text:?}"), "")
                })?),
            };
        for &to in &ips {
            // "0.0.0.0" and "::" mean every address of that family.
            let (family_ok, host_addr) = match host_addr {
                None => (true, None),
                Some(addr) => (
                    addr.is_ipv6() == to.is_ipv6(),
                    Some(addr).filter(|a| !a.is_unspecified()),
                ),
            };
            if !family_ok {
                continue;
            }
            let via = match vias.get(&to) {
                Some(via) => via.clone(),
                None => {
                    let resolved = resolve(&Target::Addr(to), None)?;
                    let via = resolved[0].via.name.clone();
                    vias.insert(to, via.clone());
                    via
                }
            };
            mappings.push(Mapping {
                proto,
                host_addr,
                host_port: port.host_port,
                to_addr: to,
                to_port: port.container_port,
                via,
                netns: container.netns.map(String::from),
                netns_inode: inode,
                allow_direct: false,
                container: Some(container.id.to_string()),
                container_ifname: Some(container.ifname.to_string()),
                network: None,
            });
        }
    }
    Ok(mappings)
}

/// ADD: publish the container's port mappings (replacing any it had) and pass
/// `prevResult` on unchanged.
fn add(config: &Value, container: &Container) -> Result<String, CniError> {
    let wanted = desired(config, container)?;
    update(false, |current| {
        let mut target: Vec<Mapping> = current
            .iter()
            .filter(|m| !container.owns(m))
            .cloned()
            .collect();
        target.extend(wanted.iter().cloned());
        Ok(target)
    })?;
    let version = config.get("cniVersion").cloned().unwrap_or(Value::Null);
    let result = match config.get("prevResult") {
        Some(result) => result.clone(),
        None => json!({ "cniVersion": version }),
    };
    Ok(result.to_string())
}

/// DEL: remove the container's mappings; nothing to remove (a second DEL, a container
/// whose namespace is gone) is success.
fn del(container: &Container) -> Result<(), CniError> {
    update(false, |current| {
        Ok(current
            .iter()
            .filter(|m| !container.owns(m))
            .cloned()
            .collect())
    })?;
    Ok(())
}

/// CHECK: every mapping the configuration asks for is in the table.
fn check(config: &Value, container: &Container) -> Result<(), CniError> {
    let current = list()?;
    for wanted in desired(config, container)? {
        let present = current.iter().any(|m| {
            container.owns(m)
                && m.proto == wanted.proto
                && m.host_addr == wanted.host_addr
                && m.host_port == wanted.host_port
                && m.to_addr == wanted.to_addr
                && m.to_port == wanted.to_port
        });
        if !present {
            return Err(fail(
                code::MAPPING_MISSING,
                format!(
                    "port mapping {}/{} to {} is missing",
                    wanted.host_port,
                    wanted.proto,
                    crate::with_port(wanted.to_addr, wanted.to_port)
                ),
                "run ADD again",
            ));
        }
    }
    Ok(())
}

/// GC: remove the mappings of containers that are not valid attachments any more. Only
/// mappings made by the plugin are considered: those made with `nsport add` stay.
fn gc(config: &Value) -> Result<(), CniError> {
    let valid: Vec<(String, String)> = config
        .get("cni.dev/valid-attachments")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            fail(
                code::INVALID_CONFIG,
                "GC needs cni.dev/valid-attachments",
                "",
            )
        })?
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
        .collect();
    update(false, |current| {
        Ok(current
            .iter()
            .filter(|m| match (&m.container, &m.container_ifname) {
                (Some(id), ifname) => valid.iter().any(|(vid, vif)| {
                    same_name(id, vid)
                        && ifname
                            .as_deref()
                            .is_none_or(|ifname| same_name(ifname, vif))
                }),
                (None, _) => true,
            })
            .cloned()
            .collect())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoke(command: &str, config: &str) -> Result<String, CniError> {
        let env = HashMap::new();
        run(&Invocation {
            command,
            env: &env,
            config,
        })
    }

    #[test]
    fn version_lists_the_supported_versions() {
        let out: Value =
            serde_json::from_str(&invoke("VERSION", r#"{"cniVersion":"1.0.0"}"#).unwrap()).unwrap();
        assert_eq!(out["cniVersion"], "1.0.0");
        assert!(
            out["supportedVersions"]
                .as_array()
                .unwrap()
                .contains(&json!("1.1.0"))
        );
    }

    #[test]
    fn bad_configurations_get_the_specs_codes() {
        let cases = [
            ("{", code::DECODE_FAILURE),
            (r#"{"name":"x"}"#, code::INVALID_CONFIG),
            (r#"{"cniVersion":"9.9.9"}"#, code::INCOMPATIBLE_VERSION),
            (
                r#"{"cniVersion":"1.0.0","conditionsV4":["-s","1.2.3.4"]}"#,
                code::UNSUPPORTED_FIELD,
            ),
            (r#"{"cniVersion":"1.0.0"}"#, code::INVALID_ENVIRONMENT),
        ];
        for (config, expected) in cases {
            let error = invoke("ADD", config).expect_err(config);
            assert_eq!(error.code, expected, "{config}: {error:?}");
            let json: Value = serde_json::from_str(&error.to_json("1.0.0")).unwrap();
            assert_eq!(json["code"], expected);
        }
    }

    #[test]
    fn container_addresses_come_from_its_own_interface() {
        let config = json!({"prevResult": {
            "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [{"interface": 2, "address": "10.22.0.2/24"}, {"interface": 0, "address": "10.22.0.1/24"},
                    {"address": "2001:db8::5/64"}]
        }});
        let container = Container {
            id: "c",
            ifname: "eth0",
            netns: None,
        };
        let ips = container_ips(&config, &container).unwrap();
        assert_eq!(
            ips,
            [
                "10.22.0.2".parse::<IpAddr>().unwrap(),
                "2001:db8::5".parse().unwrap()
            ]
        );
    }
}

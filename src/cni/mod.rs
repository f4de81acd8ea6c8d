//! nsport as a CNI chained plugin, in place of `portmap`.
//!
//! The runtime (containerd, CRI-O, nerdctl, Podman in CNI mode) runs the `nsport` binary
//! with `CNI_COMMAND` set, the network configuration on stdin and the container in the
//! `CNI_*` environment. The `portMappings` capability (`runtimeConfig.portMappings`) says
//! what to publish; the container's addresses come from `prevResult`, which ADD passes on
//! in the configuration's version. Each mapping records the container ID, interface and
//! network name, so that DEL removes exactly that attachment's mappings and GC those of
//! its network's attachments the runtime no longer has.
//!
//! `config` reads the configuration, `plan` decides (pure functions of the table's
//! mappings), `result` converts the result between versions; this module does the I/O.

mod conditions;
mod config;
mod plan;
mod result;

use std::collections::HashMap;
use std::net::IpAddr;

use serde_json::{Value, json};

use crate::engine::{HELPER_SETS, resolve, update};
use crate::error::kernel;
use crate::host::sysctl::Sysctl;
use crate::netlink::nftables;
use crate::netns::Namespace;
use crate::ruleset::{CHAIN_GUARD, Element, Mapping, TABLE};
use crate::{Error, Target, list};

pub use config::DIRECT_ACCESS;
use plan::Attachment;

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
    /// A transient condition: the runtime should try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// nsport's: a host port another mapping holds.
    pub const PORT_CONFLICT: u32 = 100;
    /// nsport's: CHECK found a mapping, or a path it needs, missing.
    pub const MAPPING_MISSING: u32 = 101;
}

fn fail(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError {
        code,
        msg: msg.into(),
        details: details.into(),
    }
}

/// Kernel answers that say "not now" rather than "no": another writer changed the table
/// (a stale generation), a busy resource, a full socket buffer, an interrupted call.
fn is_transient(errno: Option<i32>) -> bool {
    errno.is_some_and(|errno| {
        matches!(
            errno,
            libc::ERESTART | libc::EBUSY | libc::EAGAIN | libc::ENOBUFS | libc::EINTR
        )
    })
}

/// The same for an error the change was rolled back after.
fn is_transient_error(error: &Error) -> bool {
    match error {
        Error::Busy { .. } => true,
        Error::Netlink(netlink) => is_transient(netlink.errno()),
        Error::State { error, .. } => is_transient(error.raw_os_error()),
        _ => false,
    }
}

impl From<Error> for CniError {
    fn from(error: Error) -> CniError {
        let code = match &error {
            Error::Conflict { .. } | Error::Overlap { .. } | Error::HostPortInUse { .. } => {
                code::PORT_CONFLICT
            }
            Error::Busy { .. } => code::TRY_AGAIN_LATER,
            Error::Netlink(netlink) if is_transient(netlink.errno()) => code::TRY_AGAIN_LATER,
            Error::State { error, .. } if is_transient(error.raw_os_error()) => {
                code::TRY_AGAIN_LATER
            }
            Error::RolledBack(inner) if is_transient_error(inner) => code::TRY_AGAIN_LATER,
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
    let env = |name: &str| {
        invocation
            .env
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let required = |name: &str| {
        env(name).ok_or_else(|| fail(code::INVALID_ENVIRONMENT, format!("{name} is not set"), ""))
    };
    match invocation.command {
        "VERSION" => {
            return Ok(json!({
                "cniVersion": version_of(invocation.config),
                "supportedVersions": SUPPORTED_VERSIONS,
            })
            .to_string());
        }
        // DEL is best effort: it needs the attachment, and the network's name when the
        // configuration has one; nothing else in the configuration can make it fail.
        "DEL" => {
            let parsed = serde_json::from_str::<Value>(invocation.config).ok();
            let attachment = Attachment {
                id: required("CNI_CONTAINERID")?,
                ifname: required("CNI_IFNAME")?,
                network: config::network_name_lenient(parsed.as_ref()),
            };
            return del(&attachment).map(|()| String::new());
        }
        _ => {}
    }
    let config: Value = serde_json::from_str(invocation.config).map_err(|e| {
        fail(
            code::DECODE_FAILURE,
            "cannot decode the network configuration",
            e.to_string(),
        )
    })?;
    let version = config::version(&config)?;
    // CHECK came with 0.4.0, GC and STATUS with 1.1.0 (as libcni's skel refuses them).
    let since = match invocation.command {
        "CHECK" => "0.4.0",
        "GC" | "STATUS" => "1.1.0",
        _ => "0.3.0",
    };
    if SUPPORTED_VERSIONS.iter().position(|v| *v == version)
        < SUPPORTED_VERSIONS.iter().position(|v| *v == since)
    {
        return Err(fail(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {version} does not allow {}: it needs {since} or later",
                invocation.command
            ),
            "",
        ));
    }
    match invocation.command {
        "ADD" | "CHECK" => {
            conditions::conditions(&config)?;
            let id = required("CNI_CONTAINERID")?;
            config::container_id(id)?;
            let ifname = required("CNI_IFNAME")?;
            config::ifname(ifname)?;
            let attachment = Attachment {
                id,
                ifname,
                network: Some(config::network_name(&config)?),
            };
            let netns = env("CNI_NETNS");
            if invocation.command == "ADD" {
                add(&config, version, &attachment, netns)
            } else {
                check(&config, &attachment, netns).map(|()| String::new())
            }
        }
        "GC" => gc(&config).map(|()| String::new()),
        "STATUS" => Ok(String::new()),
        other => Err(fail(
            code::INVALID_ENVIRONMENT,
            format!("unknown CNI_COMMAND {}", config::quote(other)),
            "",
        )),
    }
}

/// The mappings the configuration asks for this attachment. Reads the kernel: the
/// namespace's inode and the interface toward each container address.
fn wanted(
    config: &Value,
    attachment: &Attachment,
    netns: Option<&str>,
) -> Result<Vec<Mapping>, CniError> {
    let mut ports = config::port_mappings(config)?;
    let allow_direct = config::allow_direct(config)?;
    let conditions = conditions::conditions(config)?;
    conditions::apply_destinations(&conditions, &mut ports)?;
    if ports.is_empty() {
        return Ok(Vec::new());
    }
    let (v4, v6) = config::container_ips(config, attachment.ifname)?;
    let ips: Vec<IpAddr> = v4
        .map(IpAddr::V4)
        .into_iter()
        .chain(v6.map(IpAddr::V6))
        .collect();
    let mut vias = HashMap::new();
    for &ip in &ips {
        let resolved = resolve(&Target::Addr(ip), None)?;
        vias.insert(ip, resolved[0].via.name.clone());
    }
    let origin = plan::Origin {
        attachment: *attachment,
        netns,
        netns_inode: netns
            .and_then(|path| Namespace::open(path).ok())
            .map(|ns| ns.inode),
        allow_direct,
        allow_from: conditions.allow_from,
    };
    // Names that do not fit an element comment are recorded as digests
    // (`ruleset::metadata`), which `Attachment::owns` matches.
    plan::wanted(&ports, &ips, &vias, &origin)
}

/// ADD: publish the attachment's port mappings (replacing any it had, taking over host
/// ports of replaced sandboxes on the same network) and pass `prevResult` on in the
/// configuration's version.
fn add(
    config: &Value,
    version: &str,
    attachment: &Attachment,
    netns: Option<&str>,
) -> Result<String, CniError> {
    let wanted = wanted(config, attachment, netns)?;
    if !wanted.is_empty() || list()?.iter().any(|m| attachment.owns(m)) {
        // A holder is gone when the namespace it recorded no longer exists.
        let gone = |held: &Mapping| crate::engine::stale_flags(std::slice::from_ref(held))[0];
        update(false, |current| {
            plan::add(current, attachment, &wanted, gone)
        })?;
    }
    let result = match config.get("prevResult") {
        Some(prev) => result::convert(prev, version)?,
        None => json!({ "cniVersion": version }),
    };
    Ok(result.to_string())
}

/// DEL: remove the attachment's mappings; nothing to remove (a second DEL, a container
/// whose namespace is gone) is success.
fn del(attachment: &Attachment) -> Result<(), CniError> {
    if list()?.iter().any(|m| attachment.owns(m)) {
        update(false, |current| Ok(plan::del(current, attachment)))?;
    }
    Ok(())
}

/// CHECK: every mapping the configuration asks for is in the table, with every path it
/// needs.
fn check(config: &Value, attachment: &Attachment, netns: Option<&str>) -> Result<(), CniError> {
    let wanted = wanted(config, attachment, netns)?;
    let mut observed = plan::Observed {
        mappings: list()?,
        ..plan::Observed::default()
    };
    if !wanted.is_empty() {
        for set in HELPER_SETS {
            for element in nftables::dump_elements(set).map_err(kernel)? {
                observed.helpers.extend(Element::helper(set, &element.key));
            }
        }
        observed.guard = nftables::dump_base_chains()
            .map_err(kernel)?
            .iter()
            .any(|chain| {
                chain.family == libc::NFPROTO_INET as u32
                    && chain.table == TABLE
                    && chain.name == CHAIN_GUARD
            });
        for mapping in wanted.iter().filter(|m| m.serves_loopback()) {
            observed
                .route_localnet
                .entry(mapping.via.clone())
                .or_insert_with(|| Sysctl::route_localnet(&mapping.via).read().ok());
        }
    }
    plan::check(&observed, attachment, &wanted)
}

/// GC: remove the mappings of this network's attachments that are not valid any more.
/// Mappings of other networks and those made with `nsport add` stay.
fn gc(config: &Value) -> Result<(), CniError> {
    let network = config::network_name(config)?;
    let valid = config::valid_attachments(config)?;
    update(false, |current| Ok(plan::gc(current, network, &valid)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::NetlinkError;

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
                r#"{"cniVersion":"1.0.0","conditionsV4":["-p","tcp"]}"#,
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
    fn commands_newer_than_the_configuration_are_refused() {
        for (command, config) in [
            ("CHECK", r#"{"cniVersion":"0.3.1","name":"n"}"#),
            ("GC", r#"{"cniVersion":"1.0.0","name":"n"}"#),
            ("STATUS", r#"{"cniVersion":"0.4.0","name":"n"}"#),
        ] {
            let error = invoke(command, config).expect_err(command);
            assert_eq!(
                error.code,
                code::INCOMPATIBLE_VERSION,
                "{command}: {error:?}"
            );
            assert!(error.msg.contains(command), "{}", error.msg);
        }
        assert_eq!(
            invoke("STATUS", r#"{"cniVersion":"1.1.0","name":"n"}"#),
            Ok(String::new())
        );
    }

    #[test]
    fn transient_kernel_conditions_ask_to_try_again_later() {
        let netlink = |errno| {
            Error::Netlink(NetlinkError::Kernel {
                index: None,
                error: std::io::Error::from_raw_os_error(errno),
            })
        };
        for errno in [libc::ERESTART, libc::EBUSY, libc::EAGAIN, libc::ENOBUFS] {
            assert_eq!(CniError::from(netlink(errno)).code, code::TRY_AGAIN_LATER);
        }
        // The engine gave up retrying a stale generation; or rolled back after EBUSY.
        assert_eq!(
            CniError::from(Error::Busy { tries: 8 }).code,
            code::TRY_AGAIN_LATER
        );
        let rolled_back = Error::RolledBack(Box::new(netlink(libc::EBUSY)));
        assert_eq!(CniError::from(rolled_back).code, code::TRY_AGAIN_LATER);
        assert_eq!(CniError::from(netlink(libc::EINVAL)).code, code::IO_FAILURE);
        let conflict = Error::Conflict {
            host: "8080/tcp".into(),
            existing: "x".into(),
        };
        assert_eq!(CniError::from(conflict).code, code::PORT_CONFLICT);
    }
}

//! The ADD result in the configuration's cniVersion, converted from `prevResult`'s.
//!
//! As libcni's converters (pkg/types/040 and pkg/types/100) do, between the versions
//! nsport speaks: 0.3.0, 0.3.1 and 0.4.0 share one result type, and so do 1.0.0 and
//! 1.1.0, so within a group only `cniVersion` changes. From 0.x to 1.x `ips[].version` goes
//! (1.0.0 removed it); from 1.x to 0.x it comes back as "4" or "6" from the address. The
//! fields 1.1.0 added (interfaces' `mtu`, `socketPath`, `pciID`; routes' `mtu`, `advmss`,
//! `priority`, `table`, `scope`) do not exist below 1.1.0 and are left out there.
//! Everything else passes through unchanged.

use serde_json::{Map, Value};

use super::config::quote;
use super::{CniError, SUPPORTED_VERSIONS, code, fail};

const INTERFACE_FIELDS_1_1: [&str; 3] = ["mtu", "socketPath", "pciID"];
const ROUTE_FIELDS_1_1: [&str; 5] = ["mtu", "advmss", "priority", "table", "scope"];

fn is_1x(version: &str) -> bool {
    version.starts_with("1.")
}

/// `prev` (a result of any version nsport speaks; one without `cniVersion` is taken to
/// be of the configuration's, as libcni does) as a result of version `to`.
pub(super) fn convert(prev: &Value, to: &str) -> Result<Value, CniError> {
    let Value::Object(fields) = prev else {
        return Err(fail(
            code::INVALID_CONFIG,
            format!("prevResult {} is not an object", quote(&prev.to_string())),
            "",
        ));
    };
    let from = match fields.get("cniVersion") {
        None | Some(Value::Null) => to,
        Some(Value::String(version)) if SUPPORTED_VERSIONS.contains(&version.as_str()) => version,
        Some(other) => {
            return Err(fail(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "prevResult.cniVersion {} cannot be converted to {to}",
                    quote(&other.to_string())
                ),
                format!("nsport converts between {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
    };
    let mut out: Map<String, Value> = fields.clone();
    out.insert("cniVersion".into(), Value::String(to.to_string()));
    if from == to {
        return Ok(Value::Object(out));
    }
    if let Some(Value::Array(ips)) = out.get_mut("ips") {
        for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
            if is_1x(to) {
                ip.remove("version");
            } else if !ip.contains_key("version") || is_1x(from) {
                let v6 = ip
                    .get("address")
                    .and_then(Value::as_str)
                    .is_some_and(|a| a.contains(':'));
                ip.insert(
                    "version".into(),
                    Value::String(if v6 { "6" } else { "4" }.into()),
                );
            }
        }
    }
    if to != "1.1.0" {
        for (list, dropped) in [
            ("interfaces", &INTERFACE_FIELDS_1_1[..]),
            ("routes", &ROUTE_FIELDS_1_1[..]),
        ] {
            if let Some(Value::Array(items)) = out.get_mut(list) {
                for item in items.iter_mut().filter_map(Value::as_object_mut) {
                    for field in dropped {
                        item.remove(*field);
                    }
                }
            }
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(version: &str) -> Value {
        let mut ips = vec![
            json!({"address": "10.22.0.2/24", "gateway": "10.22.0.1", "interface": 2}),
            json!({"address": "2001:db8::2/64", "interface": 2}),
        ];
        if !is_1x(version) {
            ips[0]["version"] = json!("4");
            ips[1]["version"] = json!("6");
        }
        let mut eth0 =
            json!({"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/x"});
        let mut route = json!({"dst": "0.0.0.0/0"});
        if version == "1.1.0" {
            eth0["mtu"] = json!(1500);
            eth0["socketPath"] = json!("/run/x.sock");
            route["mtu"] = json!(1400);
            route["table"] = json!(100);
        }
        json!({
            "cniVersion": version,
            "interfaces": [{"name": "cni0"}, {"name": "veth1"}, eth0],
            "ips": ips,
            "routes": [route],
            "dns": {"nameservers": ["10.22.0.1"]},
        })
    }

    #[test]
    fn every_combination_converts_like_libcni() {
        for from in SUPPORTED_VERSIONS {
            for to in SUPPORTED_VERSIONS {
                let converted = convert(&result(from), to).unwrap();
                let mut expected = result(to);
                if to == "1.1.0" && from != "1.1.0" {
                    // 1.1.0's fields cannot come from an older result.
                    expected = convert(&expected, "1.0.0").unwrap();
                    expected["cniVersion"] = json!("1.1.0");
                }
                assert_eq!(converted, expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn a_result_without_a_version_is_the_configurations() {
        let mut prev = result("1.0.0");
        prev.as_object_mut().unwrap().remove("cniVersion");
        assert_eq!(convert(&prev, "1.0.0").unwrap(), result("1.0.0"));
    }

    #[test]
    fn unknown_versions_are_refused_with_the_value() {
        let error = convert(&json!({"cniVersion": "0.2.0", "ip4": {}}), "1.0.0").unwrap_err();
        assert_eq!(error.code, code::INCOMPATIBLE_VERSION);
        assert!(error.msg.contains("0.2.0"), "{}", error.msg);
        assert!(convert(&json!([]), "1.0.0").is_err());
    }
}

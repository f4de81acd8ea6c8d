//! The invariants `table inet nsport` and the host's settings must satisfy whenever no
//! nsport command is running, read from the kernel with the real `nft -j` and /proc/sys in
//! the lab's host namespace (never through nsport itself), and checked with real traffic.
//!
//! Every check returns the list of violations, so that one failure shows all of them.
//!
//! (a) every mapping (an element of any4, addr4, any6 or addr6) has its helper elements:
//!     `T . T` in hairpin4/hairpin6, `VIA . T` in reach4/reach6, and T in
//!     targets4/targets6 unless its comment says `direct=allow`;
//! (b) no helper element exists without a mapping that needs it;
//! (c) route_localnet is 1 only on interfaces an IPv4 mapping serving 127.0.0.1 goes
//!     through (and is 1 on those), and wherever it is 1 the chain `guard` exists as a
//!     prerouting filter chain running before DNAT and holds exactly the rule
//!     `iifname != "lo" ip daddr 127.0.0.0/8 drop`;
//! (d) no table: route_localnet 0 on every interface of the host namespace;
//! (e) every mapping answers a real connection: from the `out` namespace (which must see
//!     its own address kept), or from the host for 127.0.0.0/8 host addresses; for
//!     mappings that serve the host's loopback, from the host through 127.0.0.1 too;
//! (f) no two mappings overlap (Docker's rule: the wildcard and a specific host address or
//!     interface on one port and protocol): the tests that check invariants never force.
//! (g) a bridge port whose namespace a mapping names (`--netns`) is in hairpin mode, and
//!     one no mapping names is back off, as the lab made it (`check_hairpin`).
//!
//! The probes of (e) need a server on each mapping's target port: the tests that use
//! this module start a TCP and a UDP server (`Lab::serve_tcp`/`serve_udp`) on every port
//! they publish to, in every namespace they publish.

use super::{LOCALHOST, Lab, OUT, v6};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Command;

/// One mapping element, as `nft -j` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// any4, addr4, on4, onaddr4 or the same for IPv6.
    pub set: String,
    pub host_addr: Option<IpAddr>,
    /// The interface it is published on (on4, onaddr4, on6, onaddr6).
    pub on: Option<String>,
    pub proto: String,
    /// The first host port; an interval element (a range) is probed at its start.
    pub host_port: u16,
    pub to_addr: IpAddr,
    pub to_port: u16,
    pub comment: String,
}

impl Mapping {
    /// The `via=` field of the comment: the host-side interface toward the target.
    pub fn via(&self) -> Option<&str> {
        self.comment
            .split(' ')
            .find_map(|field| field.strip_prefix("via="))
    }

    pub fn allow_direct(&self) -> bool {
        self.comment.split(' ').any(|field| field == "direct=allow")
    }

    pub fn is_ipv6(&self) -> bool {
        self.to_addr.is_ipv6()
    }

    /// Docker's overlap rule: same family, protocol and port, and every narrowing both
    /// have (interface, address) agrees, without being the same host side.
    pub fn overlaps(&self, other: &Mapping) -> bool {
        fn agree<T: PartialEq>(x: &Option<T>, y: &Option<T>) -> bool {
            x.is_none() || y.is_none() || x == y
        }
        self.is_ipv6() == other.is_ipv6()
            && self.proto == other.proto
            && self.host_port == other.host_port
            && agree(&self.on, &other.on)
            && agree(&self.host_addr, &other.host_addr)
            && (self.on != other.on || self.host_addr != other.host_addr)
    }

    /// An IPv4 mapping that the host reaches through 127.0.0.1 (no host address, or one
    /// in 127.0.0.0/8): the one kind that needs route_localnet on its `via`.
    pub fn serves_loopback(&self) -> bool {
        !self.is_ipv6()
            && self.on.is_none()
            && match self.host_addr {
                None => true,
                Some(IpAddr::V4(addr)) => addr.is_loopback(),
                Some(IpAddr::V6(_)) => false,
            }
    }

    pub fn label(&self) -> String {
        let host = match self.host_addr {
            None => "*".to_string(),
            Some(addr) => addr.to_string(),
        };
        format!(
            "{} {host}:{}/{} -> {}:{} [{}]",
            self.set, self.host_port, self.proto, self.to_addr, self.to_port, self.comment
        )
    }
}

/// What `nft -j list table inet nsport` shows, in the shape the checks need.
#[derive(Debug, Default)]
pub struct Table {
    pub mappings: Vec<Mapping>,
    /// Every set and map by name, its elements as nft writes them (`a . b`).
    pub sets: BTreeMap<String, BTreeSet<String>>,
    /// Every chain by name: its JSON object (type, hook, prio, policy).
    pub chains: BTreeMap<String, Value>,
    /// Every rule's expression list by chain, in order, counters left out (traffic
    /// changes them; what is checked is what is configured).
    pub rules: BTreeMap<String, Vec<Value>>,
}

pub const MAPS: [&str; 8] = [
    "any4", "addr4", "on4", "onaddr4", "any6", "addr6", "on6", "onaddr6",
];

/// The guard rule, as `nft -j` writes `iifname != "lo" ip daddr 127.0.0.0/8 drop`.
pub fn guard_rule() -> Value {
    json!([
        {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "lo"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                   "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}},
        {"drop": null}
    ])
}

/// The guard's second rule, `iifname != "lo" ip saddr 127.0.0.0/8 drop`: no forged
/// loopback source passes the allow-lists' loopback exemption.
pub fn source_guard_rule() -> Value {
    json!([
        {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "lo"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}},
        {"drop": null}
    ])
}

/// An element or value as nft writes it: `a . b`, `10.0.0.0/8`, `1000-2000`.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(object) => {
            if let Some(elem) = object.get("elem") {
                return text(&elem["val"]);
            }
            if let Some(parts) = object.get("concat").and_then(Value::as_array) {
                return parts.iter().map(text).collect::<Vec<_>>().join(" . ");
            }
            if let Some(prefix) = object.get("prefix") {
                return format!("{}/{}", text(&prefix["addr"]), prefix["len"]);
            }
            if let Some(range) = object.get("range").and_then(Value::as_array) {
                return format!("{}-{}", text(&range[0]), text(&range[1]));
            }
            value.to_string()
        }
        other => other.to_string(),
    }
}

/// The first port of a port value (a number or a range).
fn port(value: &Value) -> Option<u16> {
    match value {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::Object(object) => object
            .get("range")
            .and_then(|range| port(&range[0]))
            .or_else(|| object.get("elem").and_then(|elem| port(&elem["val"]))),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn concat(value: &Value) -> Vec<Value> {
    let value = value.get("elem").map(|elem| &elem["val"]).unwrap_or(value);
    value
        .get("concat")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_else(|| vec![value.clone()])
}

fn without_counters(expr: &Value) -> Value {
    match expr {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|item| item.get("counter").is_none())
                .cloned()
                .collect(),
        ),
        other => other.clone(),
    }
}

impl Table {
    /// Reads the table from the lab's host namespace; `None` when there is none.
    pub fn read(lab: &Lab) -> Option<Table> {
        let output = Command::new("ip")
            .args(["netns", "exec", &lab.ns("host")])
            .args(["nft", "-j", "list", "table", "inet", "nsport"])
            .output()
            .expect("run nft");
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains("No such file or directory"),
                "nft -j list table inet nsport: {stderr}"
            );
            return None;
        }
        let json: Value = serde_json::from_slice(&output.stdout).expect("nft -j prints JSON");
        Some(Table::parse(&json))
    }

    pub fn parse(json: &Value) -> Table {
        let mut table = Table::default();
        for object in json["nftables"].as_array().expect("nftables array") {
            if let Some(set) = object.get("set").or_else(|| object.get("map")) {
                let name = set["name"].as_str().unwrap().to_string();
                let elements = set["elem"].as_array().cloned().unwrap_or_default();
                let mut texts = BTreeSet::new();
                for element in &elements {
                    // A map element is [key, data]; a set element is the key alone.
                    let (key, data) = match element.as_array() {
                        Some(pair) if object.get("map").is_some() => (&pair[0], Some(&pair[1])),
                        _ => (element, None),
                    };
                    texts.insert(text(key));
                    if let (Some(data), true) = (data, MAPS.contains(&name.as_str())) {
                        table.mappings.push(Self::mapping(&name, key, data));
                    }
                }
                table.sets.insert(name, texts);
            } else if let Some(chain) = object.get("chain") {
                let name = chain["name"].as_str().unwrap().to_string();
                table.rules.entry(name.clone()).or_default();
                table.chains.insert(name, chain.clone());
            } else if let Some(rule) = object.get("rule") {
                let chain = rule["chain"].as_str().unwrap().to_string();
                table
                    .rules
                    .entry(chain)
                    .or_default()
                    .push(without_counters(&rule["expr"]));
            }
        }
        table
    }

    fn mapping(set: &str, key: &Value, data: &Value) -> Mapping {
        let comment = key
            .get("elem")
            .and_then(|elem| elem["comment"].as_str())
            .unwrap_or_default()
            .to_string();
        let mut key = concat(key);
        let data = concat(data);
        let on = set.starts_with("on").then(|| text(&key.remove(0)));
        let (host_addr, proto, host_port) = if set.contains("addr") {
            (Some(text(&key[0]).parse().unwrap()), &key[1], &key[2])
        } else {
            (None, &key[0], &key[1])
        };
        Mapping {
            set: set.to_string(),
            host_addr,
            on,
            proto: text(proto),
            host_port: port(host_port).unwrap_or_else(|| panic!("port {host_port}")),
            to_addr: text(&data[0]).parse().unwrap(),
            to_port: port(&data[1]).unwrap_or_else(|| panic!("port {}", data[1])),
            comment,
        }
    }

    pub fn set(&self, name: &str) -> BTreeSet<String> {
        self.sets.get(name).cloned().unwrap_or_default()
    }

    /// What is wrong with the guard chain, if anything: it must be a prerouting filter
    /// chain that runs before DNAT (priority below dstnat, -100: otherwise a 127.0.0.1
    /// publish is rewritten before the guard sees it), accept by default, and hold exactly
    /// its two rules.
    pub fn guard_problem(&self) -> Option<String> {
        let Some(chain) = self.chains.get("guard") else {
            return Some("there is no chain guard".into());
        };
        let hooked = chain["type"] == "filter"
            && chain["hook"] == "prerouting"
            && chain["prio"].as_i64().is_some_and(|prio| prio < -100)
            && chain["policy"] == "accept";
        if !hooked {
            return Some(format!(
                "chain guard is not the raw prerouting filter: {chain}"
            ));
        }
        let rules = &self.rules["guard"];
        if *rules != [guard_rule(), source_guard_rule()] {
            return Some(format!(
                "chain guard does not hold exactly `iifname != \"lo\" ip daddr 127.0.0.0/8 drop` and `iifname != \"lo\" ip saddr 127.0.0.0/8 drop`: {rules:?}"
            ));
        }
        None
    }
}

/// (g) for `ports`, pairs of a bridge port of br0 and the role of the namespace behind it.
pub fn check_hairpin(lab: &Lab, ports: &[(&str, &str)]) -> Vec<String> {
    let table = Table::read(lab);
    let mappings = table.as_ref().map_or(&[][..], |t| &t.mappings[..]);
    let mut violations = Vec::new();
    for (port, role) in ports {
        let ns = lab.ns(role);
        let named = mappings.iter().any(|m| {
            m.comment
                .split(' ')
                .any(|field| field.strip_prefix("netns=") == Some(ns.as_str()))
        });
        let wanted = if named { "hairpin on" } else { "hairpin off" };
        let mode = lab.hairpin_mode(port);
        if mode != wanted {
            violations.push(format!(
                "(g) bridge port {port} of {role}: {mode}, while {} mapping names {role}",
                if named { "a" } else { "no" }
            ));
        }
    }
    violations
}

/// route_localnet of every interface of the host namespace (with `all` and `default`).
pub fn route_localnet(lab: &Lab) -> BTreeMap<String, String> {
    lab.run_in("host", || {
        let mut values = BTreeMap::new();
        for entry in std::fs::read_dir("/proc/sys/net/ipv4/conf").expect("conf dir") {
            let iface = entry.unwrap().file_name().to_string_lossy().into_owned();
            let path = format!("/proc/sys/net/ipv4/conf/{iface}/route_localnet");
            // An interface may vanish between the listing and the read.
            if let Ok(value) = std::fs::read_to_string(path) {
                values.insert(iface, value.trim().to_string());
            }
        }
        values
    })
}

/// (a) to (d) and (f): the table and the settings, without traffic.
pub fn check_state(lab: &Lab) -> Vec<String> {
    let table = Table::read(lab);
    let localnet = route_localnet(lab);
    check_state_given(table.as_ref(), &localnet)
}

/// The same, given what was read.
pub fn check_state_given(
    table: Option<&Table>,
    localnet: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut violations = Vec::new();
    let on: Vec<&String> = localnet
        .iter()
        .filter(|(_, value)| value.as_str() != "0")
        .map(|(iface, _)| iface)
        .collect();
    let Some(table) = table else {
        // (d)
        for iface in on {
            violations.push(format!(
                "(d) no table inet nsport, but route_localnet is {} on {iface}",
                localnet[iface]
            ));
        }
        return violations;
    };
    let hairpin = |m: &Mapping| if m.is_ipv6() { "hairpin6" } else { "hairpin4" };
    let targets = |m: &Mapping| if m.is_ipv6() { "targets6" } else { "targets4" };
    let reach = |m: &Mapping| if m.is_ipv6() { "reach6" } else { "reach4" };
    // (a)
    for m in &table.mappings {
        let t = m.to_addr.to_string();
        if !table.set(hairpin(m)).contains(&format!("{t} . {t}")) {
            violations.push(format!(
                "(a) {} lacks `{t} . {t}` in {}",
                m.label(),
                hairpin(m)
            ));
        }
        match m.via() {
            None => violations.push(format!("(a) {} has no via= in its comment", m.label())),
            Some(via) if !table.set(reach(m)).contains(&format!("{via} . {t}")) => violations.push(
                format!("(a) {} lacks `{via} . {t}` in {}", m.label(), reach(m)),
            ),
            Some(_) => {}
        }
        if !m.allow_direct() && !table.set(targets(m)).contains(&t) {
            violations.push(format!("(a) {} lacks {t} in {}", m.label(), targets(m)));
        }
    }
    // (b)
    for set in ["hairpin4", "hairpin6"] {
        for element in table.set(set) {
            let needed = table.mappings.iter().any(|m| {
                let t = m.to_addr.to_string();
                hairpin(m) == set && element == format!("{t} . {t}")
            });
            if !needed {
                violations.push(format!("(b) {set} holds {element} without a mapping to it"));
            }
        }
    }
    for set in ["targets4", "targets6"] {
        for element in table.set(set) {
            let needed = table.mappings.iter().any(|m| {
                targets(m) == set && !m.allow_direct() && m.to_addr.to_string() == element
            });
            if !needed {
                violations.push(format!(
                    "(b) {set} holds {element} without a protected mapping to it"
                ));
            }
        }
    }
    for set in ["reach4", "reach6"] {
        for element in table.set(set) {
            let needed = table.mappings.iter().any(|m| {
                reach(m) == set
                    && m.via()
                        .is_some_and(|via| element == format!("{via} . {}", m.to_addr))
            });
            if !needed {
                violations.push(format!(
                    "(b) {set} holds {element} without a mapping to it through that interface"
                ));
            }
        }
    }
    // (f)
    for (i, a) in table.mappings.iter().enumerate() {
        for b in &table.mappings[i + 1..] {
            if a.overlaps(b) {
                violations.push(format!(
                    "(f) {} and {} overlap, and nothing here publishes with --force",
                    a.label(),
                    b.label()
                ));
            }
        }
    }
    // (c)
    let needs: BTreeSet<&str> = table
        .mappings
        .iter()
        .filter(|m| m.serves_loopback())
        .filter_map(Mapping::via)
        .collect();
    for iface in &on {
        if !needs.contains(iface.as_str()) {
            violations.push(format!(
                "(c) route_localnet is {} on {iface}, which no 127.0.0.1 mapping goes through",
                localnet[*iface]
            ));
        }
    }
    for iface in &needs {
        if localnet.get(*iface).is_some_and(|value| value == "0") {
            violations.push(format!(
                "(c) route_localnet is 0 on {iface}, which a 127.0.0.1 mapping goes through"
            ));
        }
    }
    if !on.is_empty()
        && let Some(problem) = table.guard_problem()
    {
        violations.push(format!(
            "(c) route_localnet is on ({}) but {problem}",
            on.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    violations
}

/// Sends one connection or datagram; TCP or UDP by the mapping's protocol. Tries twice:
/// a probe is about reachability, and one lost datagram is not a missing mapping.
fn probe(lab: &Lab, role: &str, addr: IpAddr, m: &Mapping) -> Option<String> {
    (0..2).find_map(|_| match m.proto.as_str() {
        "tcp" => lab.tcp(role, addr, m.host_port),
        "udp" => lab.udp(role, addr, m.host_port),
        _ => None,
    })
}

/// (e): every mapping answers real traffic.
pub fn check_reachable(lab: &Lab) -> Vec<String> {
    let Some(table) = Table::read(lab) else {
        return Vec::new();
    };
    let mut violations = Vec::new();
    for m in &table.mappings {
        if m.proto != "tcp" && m.proto != "udp" {
            continue;
        }
        let mut paths: Vec<(&str, IpAddr, Option<String>)> = Vec::new();
        // A mapping on an interface answers only what arrives there: probed from `out`
        // when it is out's interface `vo`, and not from the host, which it never serves.
        match m.on.as_deref() {
            Some("vo") => {}
            Some(_) => continue,
            None => {}
        }
        match m.host_addr {
            Some(addr @ IpAddr::V4(v4)) if v4.is_loopback() => paths.push(("host", addr, None)),
            Some(addr @ IpAddr::V4(_)) => paths.push(("out", addr, Some(OUT.to_string()))),
            Some(addr @ IpAddr::V6(_)) => paths.push(("out", addr, Some(v6::OUT.to_string()))),
            None if m.is_ipv6() => {
                paths.push(("out", v6::HOST_OUT.into(), Some(v6::OUT.to_string())))
            }
            None => {
                paths.push(("out", super::HOST_OUT.into(), Some(OUT.to_string())));
                if m.on.is_none() {
                    paths.push(("host", LOCALHOST.into(), None));
                }
            }
        }
        for (role, addr, expected) in paths {
            let answer = probe(lab, role, addr, m);
            let ok = match &expected {
                Some(client) => answer.as_ref() == Some(client),
                None => answer.is_some(),
            };
            if !ok {
                violations.push(format!(
                    "(e) {} from {role} to {addr}: answer {answer:?}, expected {}",
                    m.label(),
                    expected.as_deref().unwrap_or("any answer")
                ));
            }
        }
    }
    violations
}

/// Every invariant: (a) to (e).
pub fn check(lab: &Lab) -> Vec<String> {
    let mut violations = check_state(lab);
    violations.extend(check_reachable(lab));
    violations
}

/// Panics listing every violation, when there is one.
pub fn assert_none(violations: &[String], context: &str) {
    assert!(
        violations.is_empty(),
        "{context}: {} invariant violations:\n  {}",
        violations.len(),
        violations.join("\n  ")
    );
}

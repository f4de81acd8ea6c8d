//! nsport as a CNI plugin in a cluster: pod IPs stay reachable, networks keep to their own
//! mappings, several addresses per family, DEL that never fails on configuration, results
//! in the configuration's version, CHECK of every access path, and a restarted pod whose
//! old sandbox is not deleted yet. Every case runs Debian's reference plugins (`bridge`,
//! `ptp`, `host-local`) for real in namespaces the test creates, then nsport after them.

mod lab;

use lab::*;
use serde_json::{Value, json};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

const PLUGINS: &str = "/usr/lib/cni";

fn nsport() -> &'static str {
    env!("CARGO_BIN_EXE_nsport")
}

/// What a plugin printed, and whether it exited 0.
struct Outcome {
    ok: bool,
    stdout: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.stdout))
    }

    fn code(&self) -> u64 {
        assert!(!self.ok, "expected an error, got {}", self.stdout);
        self.json()["code"].as_u64().unwrap()
    }
}

/// One attachment: the container ID, its namespace (a lab role) and interface.
#[derive(Clone, Copy)]
struct Att<'a> {
    id: &'a str,
    role: &'a str,
    ifname: &'a str,
}

/// Runs a CNI plugin in the lab's host namespace the way libcni does; `config` is the raw
/// text on stdin.
fn run(lab: &Lab, program: &str, command: &str, att: Att, config: &str) -> Outcome {
    let netns = if att.role.is_empty() {
        String::new()
    } else {
        format!("/run/netns/{}", lab.ns(att.role))
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("host"), program])
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", att.id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", att.ifname)
        .env("CNI_PATH", PLUGINS)
        .env("NSPORT_STATE_DIR", lab.state_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success() || !stdout.is_empty(),
        "{program} {command} failed without error JSON: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Outcome {
        ok: output.status.success(),
        stdout,
    }
}

fn ns(lab: &Lab, command: &str, att: Att, config: &Value) -> Outcome {
    run(lab, nsport(), command, att, &config.to_string())
}

/// A network of Debian's `kind` plugin (`bridge` on `bridge`, or `ptp`) with one
/// host-local range per subnet; `routes` adds default routes of each family.
fn network(
    lab: &Lab,
    name: &str,
    kind: &str,
    bridge: &str,
    subnets: &[&str],
    routes: bool,
) -> Value {
    let ranges: Vec<Value> = subnets.iter().map(|s| json!([{"subnet": s}])).collect();
    let mut route_list = Vec::new();
    if routes {
        if subnets.iter().any(|s| !s.contains(':')) {
            route_list.push(json!({"dst": "0.0.0.0/0"}));
        }
        if subnets.iter().any(|s| s.contains(':')) {
            route_list.push(json!({"dst": "::/0"}));
        }
    }
    let mut config = json!({
        "cniVersion": "1.0.0",
        "name": name,
        "type": kind,
        "ipam": {
            "type": "host-local",
            "ranges": ranges,
            "dataDir": lab.state_dir().join("ipam"),
            "routes": route_list,
        },
    });
    if kind == "bridge" {
        config["bridge"] = json!(bridge);
        config["isGateway"] = json!(true);
        config["hairpinMode"] = json!(true);
    }
    config
}

/// Makes the role's namespace and attaches it with Debian's plugin; returns the result.
fn attach(lab: &mut Lab, net: &Value, att: Att<'static>) -> Value {
    if !lab_has(lab, att.role) {
        lab.add_namespace(att.role);
        // Addresses are usable at once, without duplicate detection.
        lab.write_sysctl(att.role, "net/ipv6/conf/default/accept_dad", "0");
        lab.write_sysctl(att.role, "net/ipv6/conf/all/accept_dad", "0");
    }
    let kind = net["type"].as_str().unwrap();
    let out = run(
        lab,
        &format!("{PLUGINS}/{kind}"),
        "ADD",
        att,
        &net.to_string(),
    );
    assert!(out.ok, "{kind} ADD: {}", out.stdout);
    out.json()
}

fn lab_has(lab: &Lab, role: &str) -> bool {
    std::path::Path::new(&format!("/run/netns/{}", lab.ns(role))).exists()
}

/// nsport's configuration on network `name` after `result`, publishing `ports`.
fn ports(name: &str, result: &Value, ports: Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "type": "nsport",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": ports},
        "prevResult": result,
    })
}

/// The container's addresses in `result`, in order.
fn addresses(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| {
            let text = ip["address"].as_str().unwrap();
            text.split('/').next().unwrap().parse().unwrap()
        })
        .collect()
}

fn first_v4(result: &Value) -> Ipv4Addr {
    addresses(result)
        .into_iter()
        .find_map(|a| match a {
            IpAddr::V4(a) => Some(a),
            _ => None,
        })
        .unwrap()
}

fn first_v6(result: &Value) -> Ipv6Addr {
    addresses(result)
        .into_iter()
        .find_map(|a| match a {
            IpAddr::V6(a) => Some(a),
            _ => None,
        })
        .unwrap()
}

fn listing(lab: &Lab) -> Vec<Value> {
    serde_json::from_str::<Value>(&lab.nsport_ok(&["ls", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The host ports published, sorted, one entry per mapping.
fn host_ports(lab: &Lab) -> Vec<u64> {
    let mut ports: Vec<u64> = listing(lab)
        .iter()
        .map(|m| m["host_port"].as_u64().unwrap())
        .collect();
    ports.sort();
    ports
}

fn forwarding_on(lab: &Lab) {
    lab.write_sysctl("host", "net/ipv4/ip_forward", "1");
    lab.write_sysctl("host", "net/ipv6/conf/all/forwarding", "1");
}

/// Item 1: in CNI mode, a pod's own addresses stay reachable on every port from a routed
/// pod on the same node, a pod of another network and another host, IPv4 and IPv6, as
/// before ADD; `"directAccess": "deny"` brings back the CLI's protection.
#[test]
fn pod_ips_stay_reachable_unless_the_network_denies_direct_access() {
    let mut lab = Lab::dual_stack(BrNetfilter::Off);
    forwarding_on(&lab);
    let net_a = network(
        &lab,
        "neta",
        "bridge",
        "cni0",
        &["10.22.0.0/24", "2001:db8:22::/64"],
        true,
    );
    let net_b = network(
        &lab,
        "netb",
        "bridge",
        "cni1",
        &["10.23.0.0/24", "2001:db8:23::/64"],
        true,
    );
    let net_p = network(
        &lab,
        "netp",
        "ptp",
        "",
        &["10.24.0.0/24", "2001:db8:24::/64"],
        true,
    );
    let pod = Att {
        id: "pod",
        role: "pod",
        ifname: "eth0",
    };
    let result = attach(&mut lab, &net_a, pod);
    attach(
        &mut lab,
        &net_b,
        Att {
            id: "other",
            role: "other",
            ifname: "eth0",
        },
    );
    attach(
        &mut lab,
        &net_p,
        Att {
            id: "routed",
            role: "routed",
            ifname: "eth0",
        },
    );
    let _server = lab.serve_tcp("pod", ANY, 80);
    let _other_port = lab.serve_tcp("pod", ANY, 81);
    let (v4, v6) = (first_v4(&result), first_v6(&result));
    // Each client reaching the pod's own addresses, on a published and an unpublished port.
    let probe = |lab: &Lab| -> Vec<(String, bool)> {
        let mut seen = Vec::new();
        for client in ["out", "other", "routed"] {
            for port in [80, 81] {
                seen.push((
                    format!("{client} -> {v4}:{port}"),
                    lab.tcp(client, v4, port).is_some(),
                ));
            }
            seen.push((
                format!("{client} -> [{v6}]:80"),
                lab.tcp(client, v6, 80).is_some(),
            ));
        }
        seen
    };
    let before = probe(&lab);
    assert!(before.iter().all(|(_, ok)| *ok), "before ADD: {before:?}");

    let mut config = ports(
        "neta",
        &result,
        json!([{"hostPort": 8080, "containerPort": 80}]),
    );
    let out = ns(&lab, "ADD", pod, &config);
    assert!(out.ok, "{}", out.stdout);
    assert!(lab.tcp("out", HOST_OUT, 8080).is_some());
    assert_eq!(
        probe(&lab),
        before,
        "after ADD the pod's addresses must stay reachable"
    );
    assert!(ns(&lab, "CHECK", pod, &config).ok);
    // The guard of the host's loopback stays on regardless.
    assert!(
        lab.nft("host", "list chain inet nsport guard")
            .contains("drop")
    );
    assert!(ns(&lab, "DEL", pod, &config).ok);

    // Opt-in protection: only the published port, through the host, reaches the pod.
    config["directAccess"] = json!("deny");
    let out = ns(&lab, "ADD", pod, &config);
    assert!(out.ok, "{}", out.stdout);
    assert!(lab.tcp("out", HOST_OUT, 8080).is_some());
    assert_eq!(lab.tcp("out", v6::HOST_OUT, 8080), some(v6::OUT));
    let denied = probe(&lab);
    assert!(
        denied.iter().all(|(_, ok)| !*ok),
        "with directAccess deny: {denied:?}"
    );
    assert!(ns(&lab, "CHECK", pod, &config).ok);
    // Back to the default: an ADD without the key makes the pod reachable again.
    config.as_object_mut().unwrap().remove("directAccess");
    assert!(ns(&lab, "ADD", pod, &config).ok);
    assert_eq!(probe(&lab), before);

    // A value that is not "allow" or "deny" is refused, naming the key and the value.
    config["directAccess"] = json!("maybe");
    let out = ns(&lab, "ADD", pod, &config);
    assert_eq!(out.code(), 7, "{}", out.stdout);
    let msg = out.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("directAccess") && msg.contains("maybe"),
        "{msg}"
    );
}

/// Item 2: the same container on two networks, and two networks on one host: DEL, CHECK
/// and GC act on their own network's mappings only; GC takes a null or missing list of
/// valid attachments as empty.
#[test]
fn gc_del_and_check_stay_in_their_network() {
    let mut lab = Lab::new(BrNetfilter::Off);
    let net_a = network(&lab, "neta", "bridge", "cni0", &["10.22.0.0/24"], true);
    let net_b = network(&lab, "netb", "bridge", "cni1", &["10.23.0.0/24"], false);
    let c1a = Att {
        id: "c1",
        role: "c1",
        ifname: "eth0",
    };
    let c1b = Att {
        id: "c1",
        role: "c1",
        ifname: "net1",
    };
    let c2b = Att {
        id: "c2",
        role: "c2",
        ifname: "eth0",
    };
    let c3a = Att {
        id: "c3",
        role: "c3",
        ifname: "eth0",
    };
    let r1a = attach(&mut lab, &net_a, c1a);
    let r1b = attach(&mut lab, &net_b, c1b);
    let r2b = attach(&mut lab, &net_b, c2b);
    let r3a = attach(&mut lab, &net_a, c3a);
    let cfg = |name: &str, result: &Value, port: u16| {
        ports(
            name,
            result,
            json!([{"hostPort": port, "containerPort": 80}]),
        )
    };
    for (att, config) in [
        (c1a, cfg("neta", &r1a, 8080)),
        (c1b, cfg("netb", &r1b, 8081)),
        (c2b, cfg("netb", &r2b, 9090)),
        (c3a, cfg("neta", &r3a, 7070)),
    ] {
        let out = ns(&lab, "ADD", att, &config);
        assert!(out.ok, "{}", out.stdout);
    }
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    assert_eq!(host_ports(&lab), [3000, 7070, 8080, 8081, 9090]);

    // CHECK of network B for c1/eth0 does not see network A's mapping of c1/eth0.
    let out = ns(&lab, "CHECK", c1a, &cfg("netb", &r1a, 8080));
    assert_eq!(out.code(), 101, "{}", out.stdout);
    assert!(ns(&lab, "CHECK", c1a, &cfg("neta", &r1a, 8080)).ok);
    // DEL on network B for c1/eth0 leaves network A's mapping alone.
    assert!(ns(&lab, "DEL", c1a, &cfg("netb", &r1a, 8080)).ok);
    assert_eq!(host_ports(&lab), [3000, 7070, 8080, 8081, 9090]);

    let gc = |name: &str, valid: Option<Value>| {
        let mut config = json!({"cniVersion": "1.1.0", "name": name, "type": "nsport"});
        if let Some(valid) = valid {
            config["cni.dev/valid-attachments"] = valid;
        }
        let out = ns(
            &lab,
            "GC",
            Att {
                id: "",
                role: "",
                ifname: "",
            },
            &config,
        );
        assert!(out.ok, "GC {name}: {}", out.stdout);
    };
    // GC of A with c1/eth0 valid removes c3 only: not c1/net1 or c2, which are B's.
    gc(
        "neta",
        Some(json!([{"containerID": "c1", "ifname": "eth0"}])),
    );
    assert_eq!(host_ports(&lab), [3000, 8080, 8081, 9090]);
    let networks: Vec<(u64, Value)> = listing(&lab)
        .iter()
        .map(|m| (m["host_port"].as_u64().unwrap(), m["network"].clone()))
        .collect();
    assert!(networks.contains(&(8081, json!("netb"))), "{networks:?}");
    assert!(networks.contains(&(3000, Value::Null)), "{networks:?}");
    // GC of B with null (CRI-O for a network without pods) removes all of B's.
    gc("netb", Some(Value::Null));
    assert_eq!(host_ports(&lab), [3000, 8080]);
    // GC of A without the key: nothing of A is valid; the CLI's mapping stays.
    gc("neta", None);
    assert_eq!(host_ports(&lab), [3000]);
}

/// Item 3: two IPv4 and two IPv6 addresses on the container's interface make one mapping
/// per host port per family, to the first address of each family, as portmap does.
#[test]
fn one_mapping_per_host_port_per_family() {
    let mut lab = Lab::dual_stack(BrNetfilter::Off);
    // Debian's bridge 1.1.1 gives a bridge one gateway address per family: the bridge is
    // made here with all four, and the plugin told not to manage its addresses.
    lab.ip("host", "link add cni0 type bridge");
    for addr in [
        "10.22.0.1/24",
        "10.23.0.1/24",
        "2001:db8:22::1/64",
        "2001:db8:23::1/64",
    ] {
        lab.ip("host", &format!("addr add {addr} dev cni0 nodad"));
    }
    lab.ip("host", "link set cni0 up");
    let mut net = network(
        &lab,
        "multi",
        "bridge",
        "cni0",
        &[
            "10.22.0.0/24",
            "10.23.0.0/24",
            "2001:db8:22::/64",
            "2001:db8:23::/64",
        ],
        true,
    );
    let pod = Att {
        id: "pod",
        role: "pod",
        ifname: "eth0",
    };
    net["isGateway"] = json!(false);
    let result = attach(&mut lab, &net, pod);
    let all = addresses(&result);
    assert_eq!(all.iter().filter(|a| a.is_ipv4()).count(), 2, "{result}");
    assert_eq!(all.iter().filter(|a| a.is_ipv6()).count(), 2, "{result}");
    let _server = lab.serve_tcp("pod", ANY, 80);
    let config = ports(
        "multi",
        &result,
        json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8443, "containerPort": 80, "protocol": "tcp", "hostIP": "::"},
        ]),
    );
    let out = ns(&lab, "ADD", pod, &config);
    assert!(out.ok, "{}", out.stdout);
    let mut seen: Vec<(u64, String)> = listing(&lab)
        .iter()
        .map(|m| {
            (
                m["host_port"].as_u64().unwrap(),
                m["to_addr"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    let (v4, v6) = (first_v4(&result).to_string(), first_v6(&result).to_string());
    let mut expected = vec![(8080, v4), (8080, v6.clone()), (8443, v6)];
    expected.sort();
    assert_eq!(seen, expected);
    assert!(lab.tcp("out", HOST_OUT, 8080).is_some());
    assert!(lab.tcp("out", v6::HOST_OUT, 8080).is_some());
    assert!(lab.tcp("out", v6::HOST_OUT, 8443).is_some());
    assert!(ns(&lab, "CHECK", pod, &config).ok);
    assert!(ns(&lab, "DEL", pod, &config).ok);
    assert!(listing(&lab).is_empty());
}

/// Item 4: DEL is best effort: configuration ADD would refuse, or that is not even JSON,
/// still removes the container's mappings and exits 0; so does DEL with nothing left.
#[test]
fn del_never_fails_on_configuration() {
    let mut lab = Lab::new(BrNetfilter::Off);
    let net = network(&lab, "labnet", "bridge", "cni0", &["10.22.0.0/24"], true);
    // A container ID as long as containerd's and CRI-O's.
    let pod = Att {
        id: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        role: "pod",
        ifname: "eth0",
    };
    let result = attach(&mut lab, &net, pod);
    let good = ports(
        "labnet",
        &result,
        json!([{"hostPort": 8080, "containerPort": 80}]),
    );
    let with = |key: &str, value: Value| {
        let mut config = good.clone();
        config[key] = value;
        config.to_string()
    };
    let without = |key: &str| {
        let mut config = good.clone();
        config.as_object_mut().unwrap().remove(key);
        config.to_string()
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "conditionsV4 negated",
            with("conditionsV4", json!(["!", "-s", "192.0.2.9"])),
        ),
        (
            "conditionsV6 on ports",
            with("conditionsV6", json!(["-p", "tcp"])),
        ),
        ("no cniVersion", without("cniVersion")),
        ("cniVersion 0.2.0", with("cniVersion", json!("0.2.0"))),
        ("unknown fields", with("somethingNew", json!({"x": 1}))),
        ("no prevResult", without("prevResult")),
        (
            "bad portMappings",
            with("runtimeConfig", json!({"portMappings": [{"hostPort": 0}]})),
        ),
        ("bad directAccess", with("directAccess", json!(17))),
        ("not JSON", "{not json".to_string()),
    ];
    for (case, config) in &cases {
        let out = ns(&lab, "ADD", pod, &good);
        assert!(out.ok, "{}", out.stdout);
        assert_eq!(host_ports(&lab), [8080]);
        // nft reads the record back; an ID this long (with the namespace's path) is
        // recorded as its digest to fit nft's 128 bytes, and DEL must still find it.
        let table = lab.nft("host", "list table inet nsport");
        assert!(
            table.contains("cni=#01234567~") && table.contains("/eth0 net=labnet"),
            "{table}"
        );
        let out = run(&lab, nsport(), "DEL", pod, config);
        assert!(
            out.ok && out.stdout.is_empty(),
            "DEL with {case}: {}",
            out.stdout
        );
        assert!(listing(&lab).is_empty(), "DEL with {case} left mappings");
        // Nothing left: DEL again succeeds.
        let out = run(&lab, nsport(), "DEL", pod, config);
        assert!(out.ok, "second DEL with {case}: {}", out.stdout);
    }
}

/// Item 5: the result carries the configuration's cniVersion, converted from prevResult's
/// (ips[].version exists up to 0.4.0 and not from 1.0.0; 1.1.0 adds interface and route
/// fields), for every combination of the versions nsport speaks.
#[test]
fn results_in_the_configurations_version() {
    const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
    let mut lab = Lab::new(BrNetfilter::Off);
    let roles = ["v030", "v031", "v040", "v100", "v110"];
    let mut results = Vec::new();
    for (version, role) in VERSIONS.iter().zip(roles) {
        let mut net = network(&lab, "labnet", "bridge", "cni0", &["10.22.0.0/24"], true);
        // Debian's bridge 1.1.1 speaks up to 1.0.0: the 1.1.0 result is its 1.0.0 result
        // with a 1.1.0 field added.
        net["cniVersion"] = json!(if *version == "1.1.0" {
            "1.0.0"
        } else {
            version
        });
        let mut result = attach(
            &mut lab,
            &net,
            Att {
                id: role,
                role,
                ifname: "eth0",
            },
        );
        if *version == "1.1.0" {
            result["cniVersion"] = json!("1.1.0");
            result["interfaces"][0]["mtu"] = json!(1500);
        }
        assert_eq!(result["cniVersion"], json!(version));
        results.push((role, result));
    }
    let _server = lab.serve_tcp("v040", Ipv4Addr::UNSPECIFIED, 80);
    for &(role, ref prev) in &results {
        for version in VERSIONS {
            let mut config = ports(
                "labnet",
                prev,
                json!([{"hostPort": 8080, "containerPort": 80}]),
            );
            config["cniVersion"] = json!(version);
            let att = Att {
                id: role,
                role,
                ifname: "eth0",
            };
            let out = ns(&lab, "ADD", att, &config);
            assert!(
                out.ok,
                "{} -> {version}: {}",
                prev["cniVersion"], out.stdout
            );
            let result = out.json();
            let case = format!(
                "prevResult {} -> config {version}: {result}",
                prev["cniVersion"]
            );
            assert_eq!(result["cniVersion"], json!(version), "{case}");
            let pre_1 = version.starts_with("0.");
            for ip in result["ips"].as_array().unwrap() {
                let address = ip["address"].as_str().unwrap();
                if pre_1 {
                    let family = if address.contains(':') { "6" } else { "4" };
                    assert_eq!(ip["version"], json!(family), "{case}");
                } else {
                    assert!(ip.get("version").is_none(), "{case}");
                }
            }
            // Everything else comes through: addresses, interfaces, routes, dns.
            assert_eq!(addresses(&result), addresses(prev), "{case}");
            assert_eq!(
                result["interfaces"].as_array().unwrap().len(),
                prev["interfaces"].as_array().unwrap().len(),
                "{case}"
            );
            for (a, b) in result["interfaces"]
                .as_array()
                .unwrap()
                .iter()
                .zip(prev["interfaces"].as_array().unwrap())
            {
                assert_eq!(
                    (&a["name"], &a["mac"], &a["sandbox"]),
                    (&b["name"], &b["mac"], &b["sandbox"]),
                    "{case}"
                );
            }
            assert_eq!(result["routes"], prev["routes"], "{case}");
            let mtu = &result["interfaces"][0]["mtu"];
            assert_eq!(
                mtu.is_null(),
                version != "1.1.0" || prev["cniVersion"] != "1.1.0",
                "{case}"
            );
            if role == "v040" {
                assert!(lab.tcp("out", HOST_OUT, 8080).is_some(), "{case}");
            }
            assert!(ns(&lab, "DEL", att, &config).ok);
        }
    }
}

/// Item 6: code 2 names the field and its value; CHECK verifies every access path of each
/// mapping, not only its map element.
#[test]
fn check_verifies_every_access_path() {
    let mut lab = Lab::new(BrNetfilter::Off);
    let net = network(&lab, "labnet", "bridge", "cni0", &["10.22.0.0/24"], true);
    let pod = Att {
        id: "pod",
        role: "pod",
        ifname: "eth0",
    };
    let result = attach(&mut lab, &net, pod);
    let ip = first_v4(&result);
    let mut config = ports(
        "labnet",
        &result,
        json!([{"hostPort": 8080, "containerPort": 80}]),
    );
    config["conditionsV4"] = json!(["-s", "192.0.2.9", "--dport", "8080"]);
    let out = ns(&lab, "ADD", pod, &config);
    assert_eq!(out.code(), 2);
    let msg = out.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("conditionsV4") && msg.contains("--dport"),
        "{msg}"
    );
    config.as_object_mut().unwrap().remove("conditionsV4");
    let config_deny = {
        let mut c = config.clone();
        c["directAccess"] = json!("deny");
        c
    };

    let broken = |lab: &Lab, config: &Value, what: &str| {
        let out = ns(lab, "CHECK", pod, config);
        assert!(!out.ok, "CHECK passed with {what}");
        let msg = out.json()["msg"].as_str().unwrap().to_string();
        assert!(msg.contains("8080"), "{what}: {msg}");
        msg
    };
    let readd = |lab: &Lab, config: &Value| {
        assert!(ns(lab, "DEL", pod, config).ok);
        assert!(ns(lab, "ADD", pod, config).ok);
        assert!(ns(lab, "CHECK", pod, config).ok);
    };
    assert!(ns(&lab, "ADD", pod, &config).ok);
    assert!(ns(&lab, "CHECK", pod, &config).ok);
    // route_localnet reset on the bridge: 127.0.0.1:8080 no longer works.
    lab.write_sysctl("host", "net/ipv4/conf/cni0/route_localnet", "0");
    assert!(lab.tcp("host", LOCALHOST, 8080).is_none());
    let msg = broken(&lab, &config, "route_localnet 0");
    assert!(msg.contains("route_localnet"), "{msg}");
    lab.write_sysctl("host", "net/ipv4/conf/cni0/route_localnet", "1");
    assert!(ns(&lab, "CHECK", pod, &config).ok);
    // The hairpin element gone.
    lab.nft(
        "host",
        &format!("delete element inet nsport hairpin4 {{ {ip} . {ip} }}"),
    );
    let msg = broken(&lab, &config, "no hairpin element");
    assert!(msg.contains("hairpin4"), "{msg}");
    readd(&lab, &config);
    // The interface element gone.
    lab.nft(
        "host",
        &format!("delete element inet nsport reach4 {{ \"cni0\" . {ip} }}"),
    );
    let msg = broken(&lab, &config, "no reach element");
    assert!(msg.contains("reach4"), "{msg}");
    readd(&lab, &config);
    // The guard chain gone.
    lab.nft("host", "delete chain inet nsport guard");
    let msg = broken(&lab, &config, "no guard chain");
    assert!(msg.contains("guard"), "{msg}");
    lab.nsport_ok(&["flush"]);
    // With directAccess deny, the target element is part of the mapping.
    assert!(ns(&lab, "ADD", pod, &config_deny).ok);
    assert!(ns(&lab, "CHECK", pod, &config_deny).ok);
    lab.nft(
        "host",
        &format!("delete element inet nsport targets4 {{ {ip} }}"),
    );
    let msg = broken(&lab, &config_deny, "no targets element");
    assert!(msg.contains("targets4"), "{msg}");
}

/// Item 7: a pod restarted before its old sandbox's DEL: the new sandbox's ADD takes the
/// host port over from the old one on the same network (as portmap does), the late DEL
/// of the old sandbox leaves the new mapping alone, and a host port held by the CLI or by
/// another network is still refused.
#[test]
fn restarted_pod_takes_its_host_port_over_within_its_network() {
    let mut lab = Lab::new(BrNetfilter::Off);
    let net = network(&lab, "labnet", "bridge", "cni0", &["10.22.0.0/24"], true);
    let other_net = network(&lab, "other", "bridge", "cni1", &["10.23.0.0/24"], true);
    let old = Att {
        id: "old-sandbox",
        role: "old",
        ifname: "eth0",
    };
    let new = Att {
        id: "new-sandbox",
        role: "new",
        ifname: "eth0",
    };
    let stranger = Att {
        id: "stranger",
        role: "stranger",
        ifname: "eth0",
    };
    let r_old = attach(&mut lab, &net, old);
    let r_new = attach(&mut lab, &net, new);
    let r_stranger = attach(&mut lab, &other_net, stranger);
    let mappings = json!([
        {"hostPort": 8080, "containerPort": 80},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
    ]);
    let old_config = ports("labnet", &r_old, mappings.clone());
    let new_config = ports("labnet", &r_new, mappings);
    assert!(ns(&lab, "ADD", old, &old_config).ok);
    let _server = lab.serve_tcp("new", Ipv4Addr::UNSPECIFIED, 80);
    // The old sandbox is dead: nothing answers there.
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), None);

    // While the old sandbox's namespace lives, its ports stay its own.
    let out = ns(&lab, "ADD", new, &new_config);
    assert_eq!(out.code(), 100, "{}", out.stdout);
    assert!(
        out.json()["msg"].as_str().unwrap().contains("old-sandbox"),
        "{}",
        out.stdout
    );
    // Once it is gone (the runtime tore it down before its DEL came), the new one takes over.
    lab.ip_netns_del("old");
    let out = ns(&lab, "ADD", new, &new_config);
    assert!(out.ok, "{}", out.stdout);
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), some(OUT));
    let owners: Vec<Value> = listing(&lab)
        .iter()
        .map(|m| m["container"].clone())
        .collect();
    assert_eq!(owners, [json!("new-sandbox"), json!("new-sandbox")]);
    assert!(ns(&lab, "CHECK", new, &new_config).ok);
    // The old sandbox's late DEL changes nothing.
    assert!(ns(&lab, "DEL", old, &old_config).ok);
    assert_eq!(listing(&lab).len(), 2);
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), some(OUT));

    // Another network's pod cannot take it, nor a port the CLI holds.
    let taken = ports(
        "other",
        &r_stranger,
        json!([{"hostPort": 8080, "containerPort": 80}]),
    );
    let out = ns(&lab, "ADD", stranger, &taken);
    assert_eq!(out.code(), 100, "{}", out.stdout);
    assert!(
        out.json()["msg"].as_str().unwrap().contains("new-sandbox"),
        "{}",
        out.stdout
    );
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    let cli = ports(
        "labnet",
        &r_new,
        json!([{"hostPort": 3000, "containerPort": 80}]),
    );
    let out = ns(&lab, "ADD", new, &cli);
    assert_eq!(out.code(), 100, "{}", out.stdout);
    // The refused ADD left the pod's mappings as they were.
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), some(OUT));
}

/// What a client sees on each of portmap's integration-test paths, for one cniVersion,
/// one attaching plugin (`bridge` or `ptp`) and one publisher (`portmap` or `nsport`).
fn portmap_cases(
    lab: &mut Lab,
    kind: &str,
    publisher: &str,
    version: &str,
    role: &'static str,
) -> Vec<(String, bool)> {
    let mut net = network(
        lab,
        &format!("{kind}net"),
        kind,
        "cni0",
        &["10.40.0.0/24"],
        true,
    );
    net["cniVersion"] = json!(version);
    let att = Att {
        id: role,
        role,
        ifname: "eth0",
    };
    let result = attach(lab, &net, att);
    let mut config = ports(
        &format!("{kind}net"),
        &result,
        json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
            {"hostPort": 4000, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
        ]),
    );
    config["cniVersion"] = json!(version);
    config["type"] = json!(publisher);
    config["snat"] = json!(true);
    let program = if publisher == "nsport" {
        nsport().to_string()
    } else {
        format!("{PLUGINS}/portmap")
    };
    let out = run(lab, &program, "ADD", att, &config.to_string());
    assert!(out.ok, "{publisher} ADD {kind} {version}: {}", out.stdout);
    let result_version = out.json()["cniVersion"].clone();
    let _tcp = lab.serve_tcp(role, Ipv4Addr::UNSPECIFIED, 80);
    let _udp = lab.serve_udp(role, Ipv4Addr::UNSPECIFIED, 53);
    let mut seen = vec![
        (
            "result in the config's version".to_string(),
            result_version == json!(version),
        ),
        (
            "outside -> host:8080/tcp, client kept".into(),
            lab.tcp("out", HOST_OUT, 8080) == some(OUT),
        ),
        (
            "outside -> host:5353/udp".into(),
            lab.udp("out", HOST_OUT, 5353).is_some(),
        ),
        (
            "host -> own address:8080".into(),
            lab.tcp("host", HOST_OUT, 8080).is_some(),
        ),
        (
            "host -> 127.0.0.1:8080".into(),
            lab.tcp("host", LOCALHOST, 8080).is_some(),
        ),
        (
            "host -> 127.0.0.1:4000 (hostIP)".into(),
            lab.tcp("host", LOCALHOST, 4000).is_some(),
        ),
        (
            "container -> host:8080 (hairpin)".into(),
            lab.tcp(role, HOST_OUT, 8080).is_some(),
        ),
    ];
    // A UDP flow running through the published port when DEL comes.
    let flow = lab.udp_socket("out");
    let answered = |socket: &std::net::UdpSocket| {
        let mut buf = [0; 64];
        (0..5).any(|_| {
            socket.send_to(b"?", (HOST_OUT, 5353)).is_ok() && socket.recv_from(&mut buf).is_ok()
        })
    };
    seen.push(("a UDP flow runs before DEL".into(), answered(&flow)));
    let out = run(lab, &program, "DEL", att, &config.to_string());
    seen.push(("DEL succeeds".into(), out.ok));
    seen.push((
        "after DEL: the running UDP flow is cut".into(),
        !answered(&flow),
    ));
    seen.push((
        "after DEL: outside -> host:8080 refused".into(),
        lab.tcp("out", HOST_OUT, 8080).is_none(),
    ));
    seen
}

/// portmap's own integration test (plugins/meta/portmap/portmap_integ_test.go) as a
/// table: every cniVersion Debian's plugins speak, bridge and ptp, TCP and UDP, each
/// access path and DEL, run with portmap and with nsport on the same configuration. Both
/// outcomes are printed; nsport must pass every case, so every case portmap passes.
fn portmap_parity(kind: &str) {
    let mut rows = Vec::new();
    for (publisher, role_prefix) in [("portmap", "p"), ("nsport", "n")] {
        let mut lab = Lab::new(BrNetfilter::Off);
        forwarding_on(&lab);
        for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"].into_iter().enumerate() {
            let role: &'static str = Box::leak(format!("{role_prefix}{i}").into_boxed_str());
            for (path, ok) in portmap_cases(&mut lab, kind, publisher, version, role) {
                rows.push((format!("{kind} {version} {path}"), publisher, ok));
            }
        }
        // portmap leaves its chains behind; the lab goes with its namespaces.
    }
    let (portmap, nsport): (Vec<_>, Vec<_>) =
        rows.into_iter().partition(|(_, p, _)| *p == "portmap");
    println!("{:<64} {:>8} {:>8}", "case", "portmap", "nsport");
    for ((case, _, with_portmap), (_, _, with_nsport)) in portmap.iter().zip(&nsport) {
        println!("{case:<64} {with_portmap:>8} {with_nsport:>8}");
    }
    for ((case, _, with_portmap), (_, _, with_nsport)) in portmap.iter().zip(&nsport) {
        assert!(*with_nsport, "nsport fails: {case}");
        // Recorded with Debian's containernetworking-plugins 1.1.1: portmap leaves the
        // conntrack entry of a running UDP flow (containernetworking/plugins#123).
        if case.contains("UDP flow is cut") {
            assert!(!with_portmap, "portmap now cuts running UDP flows: {case}");
        } else {
            assert!(*with_portmap, "portmap fails: {case}");
        }
    }
}

#[test]
fn portmap_parity_with_bridge() {
    portmap_parity("bridge");
}

#[test]
fn portmap_parity_with_ptp() {
    portmap_parity("ptp");
}

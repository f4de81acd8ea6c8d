//! nsport as a CNI chained plugin, driven the way libcni drives plugins: Debian's `bridge`
//! and `host-local` attach a container namespace, their result goes to nsport as
//! `prevResult`, and real connections go through the published ports. A differential test
//! runs Debian's `portmap` on a twin lab with the same configuration.

mod lab;

use lab::*;
use serde_json::{Value, json};
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

const PLUGINS: &str = "/usr/lib/cni";

/// Runs a CNI plugin (`nsport` or one of Debian's) in the lab's host namespace.
fn plugin(
    lab: &Lab,
    program: &str,
    command: &str,
    container: &str,
    netns: &str,
    config: &Value,
) -> (bool, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("host"), program])
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
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
        .write_all(config.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success() || !stdout.is_empty(),
        "{program} {command} failed without error JSON: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), stdout)
}

fn bridge_config(lab: &Lab) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "labnet",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "subnet": "10.22.0.0/24",
            "dataDir": lab.state_dir().join("ipam"),
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    })
}

/// Attaches `netns` to the lab's cni0 bridge with Debian's plugins; returns the result.
fn attach(lab: &Lab, container: &str, netns: &str) -> Value {
    let (ok, out) = plugin(
        lab,
        &format!("{PLUGINS}/bridge"),
        "ADD",
        container,
        netns,
        &bridge_config(lab),
    );
    assert!(ok, "bridge ADD: {out}");
    serde_json::from_str(&out).unwrap()
}

fn ports_config(kind: &str, result: &Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "labnet",
        "type": kind,
        "snat": true,
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
            {"hostPort": 4000, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
        ]},
        "prevResult": result,
    })
}

fn container_ip(result: &Value) -> Ipv4Addr {
    let address = result["ips"][0]["address"].as_str().unwrap();
    address.split('/').next().unwrap().parse().unwrap()
}

fn nsport() -> &'static str {
    env!("CARGO_BIN_EXE_nsport")
}

#[test]
fn chained_after_bridge_and_host_local_like_libcni() {
    let mut lab = Lab::new(BrNetfilter::On);
    lab.add_namespace("ctr");
    let result = attach(&lab, "c1", &lab.ns("ctr"));
    let ip = container_ip(&result);
    let _server = lab.serve_tcp("ctr", Ipv4Addr::UNSPECIFIED, 80);
    let _udp = lab.serve_udp("ctr", Ipv4Addr::UNSPECIFIED, 53);
    let config = ports_config("nsport", &result);

    let (ok, out) = plugin(&lab, nsport(), "ADD", "c1", &lab.ns("ctr"), &config);
    assert!(ok, "{out}");
    // ADD passes prevResult through unchanged.
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), result);
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), some(OUT));
    assert_eq!(lab.udp("out", HOST_OUT, 5353), some(OUT));
    assert!(lab.tcp("host", LOCALHOST, 8080).is_some());
    assert!(lab.tcp("host", LOCALHOST, 4000).is_some());
    assert_eq!(lab.tcp("out", HOST_OUT, 4000), None);
    // ls shows the container.
    let listing: Value = serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    assert!(
        listing
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["container"] == "c1")
    );
    assert!(listing[0]["to_addr"] == ip.to_string());
    assert!(lab.nsport_ok(&["ls"]).contains("cni:c1"));
    // CHECK passes while the mappings are there.
    assert!(plugin(&lab, nsport(), "CHECK", "c1", &lab.ns("ctr"), &config).0);

    let (ok, out) = plugin(&lab, nsport(), "DEL", "c1", &lab.ns("ctr"), &config);
    assert!(ok && out.is_empty(), "{out}");
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), None);
    // CHECK now reports the missing mapping, as error JSON and a failing exit.
    let (ok, out) = plugin(&lab, nsport(), "CHECK", "c1", &lab.ns("ctr"), &config);
    let error: Value = serde_json::from_str(&out).unwrap();
    assert!(
        !ok && error["code"] == 101 && error["msg"].as_str().unwrap().contains("missing"),
        "{out}"
    );
    // DEL again, and DEL once the namespace is gone, succeed.
    assert!(plugin(&lab, nsport(), "DEL", "c1", &lab.ns("ctr"), &config).0);
    sh(&["ip", "netns", "del", &lab.ns("ctr")]);
    assert!(plugin(&lab, nsport(), "DEL", "c1", "gone", &config).0);
}

#[test]
fn cli_and_cni_mappings_share_the_table_and_gc_keeps_valid_attachments() {
    let mut lab = Lab::new(BrNetfilter::Off);
    lab.add_namespace("ctr1");
    lab.add_namespace("ctr2");
    let one = attach(&lab, "c1", &lab.ns("ctr1"));
    let two = attach(&lab, "c2", &lab.ns("ctr2"));
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    let mut config = ports_config("nsport", &one);
    assert!(plugin(&lab, nsport(), "ADD", "c1", &lab.ns("ctr1"), &config).0);
    config["runtimeConfig"]["portMappings"] = json!([{"hostPort": 9090, "containerPort": 80}]);
    config["prevResult"] = two;
    assert!(plugin(&lab, nsport(), "ADD", "c2", &lab.ns("ctr2"), &config).0);
    // The same host port for another container is refused, naming the holder.
    let mut clash = ports_config("nsport", &config["prevResult"]);
    clash["runtimeConfig"]["portMappings"] = json!([{"hostPort": 3000, "containerPort": 80}]);
    let (ok, out) = plugin(&lab, nsport(), "ADD", "c2", &lab.ns("ctr2"), &clash);
    let error: Value = serde_json::from_str(&out).unwrap();
    assert!(
        !ok && error["code"] == 100 && error["msg"].as_str().unwrap().contains("172.18.0.2"),
        "{out}"
    );
    let count = || {
        let listing: Value = serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
        listing.as_array().unwrap().len()
    };
    assert_eq!(count(), 5);

    // GC (CNI 1.1.0) with only c1 valid removes c2's mapping and keeps the CLI's.
    let gc = json!({
        "cniVersion": "1.1.0",
        "name": "labnet",
        "type": "nsport",
        "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
    });
    assert!(plugin(&lab, nsport(), "GC", "", "", &gc).0);
    let listing: Value = serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    let ports: Vec<u64> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["host_port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports.len(), 4, "{listing}");
    assert!(!ports.contains(&9090) && ports.contains(&3000), "{listing}");
    // And `nsport rm` of the CLI mapping leaves the container's alone.
    lab.nsport_ok(&["rm", "3000"]);
    assert_eq!(count(), 3);
}

#[test]
fn spec_conformance() {
    let lab = Lab::new(BrNetfilter::Off);
    let (ok, out) = plugin(
        &lab,
        nsport(),
        "VERSION",
        "",
        "",
        &json!({"cniVersion": "1.0.0"}),
    );
    let version: Value = serde_json::from_str(&out).unwrap();
    assert!(ok);
    assert_eq!(version["cniVersion"], "1.0.0");
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(
            version["supportedVersions"]
                .as_array()
                .unwrap()
                .contains(&json!(v))
        );
    }
    let before = lab.ruleset();
    let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.22.0.9/24"}]});
    for (config, code) in [
        (json!({"name": "x", "type": "nsport"}), 7),
        (json!({"cniVersion": "0.1.0", "type": "nsport"}), 1),
        (
            json!({"cniVersion": "1.0.0", "type": "nsport", "conditionsV4": ["-p", "tcp"]}),
            2,
        ),
        (
            json!({"cniVersion": "1.0.0", "type": "nsport", "prevResult": prev.clone(),
                "runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}}),
            7,
        ),
        (
            json!({"cniVersion": "1.0.0", "type": "nsport", "prevResult": prev.clone(),
                "runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "dccp"}]}}),
            7,
        ),
    ] {
        let (ok, out) = plugin(&lab, nsport(), "ADD", "c9", &lab.ns("empty"), &config);
        let error: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
        assert!(!ok, "{config}");
        assert_eq!(error["code"], code, "{config}: {out}");
        assert!(error["msg"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // ADD without portMappings is a no-op that still passes prevResult on.
    let config = json!({"cniVersion": "1.0.0", "name": "n", "type": "nsport", "prevResult": prev});
    let (ok, out) = plugin(&lab, nsport(), "ADD", "c9", &lab.ns("empty"), &config);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), prev);
    assert_eq!(lab.ruleset(), before);
}

/// What a client sees on each access path, with `kind` (portmap or nsport) publishing.
fn access_paths(kind: &str) -> Vec<(&'static str, bool)> {
    let mut lab = Lab::new(BrNetfilter::Off);
    lab.add_namespace("ctr");
    lab.add_namespace("nbr");
    let result = attach(&lab, "c1", &lab.ns("ctr"));
    attach(&lab, "c2", &lab.ns("nbr"));
    let _server = lab.serve_tcp("ctr", Ipv4Addr::UNSPECIFIED, 80);
    let _secret = lab.serve_tcp("host", LOCALHOST, 7000);
    lab.write_sysctl("host", "net/ipv4/ip_forward", "1");
    let program = if kind == "nsport" {
        nsport().to_string()
    } else {
        format!("{PLUGINS}/portmap")
    };
    let (ok, out) = plugin(
        &lab,
        &program,
        "ADD",
        "c1",
        &lab.ns("ctr"),
        &ports_config(kind, &result),
    );
    assert!(ok, "{kind}: {out}");
    // The neighbour routes 127/8 to the node and accepts the answers, as an attacker would.
    lab.ip("nbr", "route add 127.0.0.0/8 via 10.22.0.1");
    lab.write_sysctl("nbr", "net/ipv4/conf/all/route_localnet", "1");
    lab.write_sysctl("nbr", "net/ipv4/conf/eth0/route_localnet", "1");
    let paths = vec![
        (
            "outside -> host:8080",
            lab.tcp("out", HOST_OUT, 8080) == some(OUT),
        ),
        (
            "host -> own address:8080",
            lab.tcp("host", HOST_OUT, 8080).is_some(),
        ),
        (
            "host -> 127.0.0.1:8080",
            lab.tcp("host", LOCALHOST, 8080).is_some(),
        ),
        (
            "host -> 127.0.0.1:4000",
            lab.tcp("host", LOCALHOST, 4000).is_some(),
        ),
        (
            "container -> host:8080 (hairpin)",
            lab.tcp("ctr", HOST_OUT, 8080).is_some(),
        ),
        (
            "neighbour container -> host:8080",
            lab.tcp("nbr", HOST_OUT, 8080).is_some(),
        ),
        // The two security cases: both must be refused.
        (
            "UNSAFE outside routing 127/8 -> 127.0.0.1:4000",
            lab.tcp("out", LOCALHOST, 4000).is_some(),
        ),
        (
            "UNSAFE neighbour -> host's 127.0.0.1:7000 service",
            lab.tcp("nbr", LOCALHOST, 7000).is_some(),
        ),
    ];
    assert!(
        plugin(
            &lab,
            &program,
            "DEL",
            "c1",
            &lab.ns("ctr"),
            &ports_config(kind, &result)
        )
        .0
    );
    paths
}

#[test]
fn differential_against_portmap() {
    let portmap = access_paths("portmap");
    let nsport = access_paths("nsport");
    println!("{:<52} {:>8} {:>8}", "access path", "portmap", "nsport");
    for ((path, with_portmap), (_, with_nsport)) in portmap.iter().zip(&nsport) {
        println!("{path:<52} {with_portmap:>8} {with_nsport:>8}");
    }
    for ((path, with_portmap), (_, with_nsport)) in portmap.iter().zip(&nsport) {
        if path.starts_with("UNSAFE") {
            assert!(!with_nsport, "nsport lets through: {path}");
            // Recorded in this lab with Debian's containernetworking-plugins 1.1.1.
            assert!(with_portmap, "portmap no longer lets through: {path}");
        } else {
            assert!(
                *with_nsport || !with_portmap,
                "works with portmap, not nsport: {path}"
            );
            assert!(*with_nsport, "nsport fails: {path}");
        }
    }
}

//! Docker's overlap rule, with real traffic: a specific host address (or interface) and
//! the wildcard on one port and protocol conflict as two sockets would. `add`, `apply` and
//! CNI ADD refuse the second, naming the first, with nothing changed in the kernel;
//! `add --force` publishes both, and the more specific one wins where they overlap (an
//! interface and an address, an interface, an address, any), as `ls` says.

mod lab;

use lab::*;
use serde_json::{Value, json};
use std::net::Ipv4Addr;

/// Runs a refused `add`: exit code 1, one line naming `named`, the ruleset as it was.
fn refused(lab: &Lab, args: &[&str], named: &[&str]) {
    let before = lab.ruleset();
    let output = lab.nsport(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    for name in named {
        assert!(stderr.contains(name), "{args:?}: {name} not in {stderr}");
    }
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(lab.ruleset(), before, "{args:?} changed the ruleset");
}

#[test]
fn the_cli_refuses_a_wildcard_and_a_specific_host_side_in_either_order() {
    let lab = Lab::new(BrNetfilter::On);
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 80);
    let (ns1, ns3) = (lab.ns("ns1"), lab.ns("ns3"));
    // The wildcard first: Docker's `-p 127.0.0.1:8080:80` after `-p 8080:80`.
    lab.nsport_ok(&["add", "--netns", &ns1, "8080:80"]);
    for spec in [
        vec!["127.0.0.1:8080:80"],
        vec!["192.0.2.1:8080:80"],
        vec!["--on", "vo", "8080:80"],
        vec!["--on", "vo", "198.51.100.1:8080:80"],
    ] {
        let mut args = vec!["add", "--netns", &ns3];
        args.extend(spec);
        refused(&lab, &args, &["8080/tcp", "172.18.0.2:80"]);
    }
    // Another port, protocol or family is not an overlap.
    lab.nsport_ok(&["add", "--netns", &ns3, "127.0.0.1:8081:80"]);
    lab.nsport_ok(&["add", "--netns", &ns3, "127.0.0.1:8080:80/udp"]);
    // What held the port still answers.
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), some(OUT));

    // The specific one first: the wildcard is refused, naming it.
    lab.nsport_ok(&["add", "--netns", &ns1, "198.51.100.1:9090:80"]);
    refused(
        &lab,
        &["add", "--netns", &ns3, "9090:80"],
        &["198.51.100.1:9090/tcp", "172.18.0.2:80"],
    );
    // An interface overlaps an address alone (the address may be on it) …
    refused(
        &lab,
        &["add", "--netns", &ns3, "--on", "v3", "9090:80"],
        &["198.51.100.1:9090/tcp"],
    );
    // … and its own host side narrowed by an address; other interfaces do not.
    lab.nsport_ok(&["add", "--netns", &ns1, "--on", "vo", "9191:80"]);
    refused(
        &lab,
        &["add", "--netns", &ns3, "--on", "vo", "192.0.2.1:9191:80"],
        &["9191/tcp on vo"],
    );
    lab.nsport_ok(&["add", "--netns", &ns3, "--on", "v3", "9191:80"]);
    // One command asking for both is refused as well, before anything is read.
    refused(
        &lab,
        &["add", "--netns", &ns3, "7070:80", "127.0.0.1:7070:80"],
        &["7070/tcp"],
    );
    // The same publish again is not an overlap with itself.
    lab.nsport_ok(&["add", "--netns", &ns1, "8080:80"]);
}

#[test]
fn force_publishes_both_and_the_more_specific_wins_in_real_traffic() {
    let lab = Lab::new(BrNetfilter::On);
    let _servers = [
        lab.serve_tcp_named("ns1", 80, "ns1"),
        lab.serve_tcp_named("ns2", 80, "ns2"),
        lab.serve_tcp_named("ns3", 80, "ns3"),
    ];
    let (ns1, ns2, ns3) = (lab.ns("ns1"), lab.ns("ns2"), lab.ns("ns3"));
    let answer = |role: &str, addr: Ipv4Addr| lab.tcp(role, addr, 8080);
    let said = |name: &str| Some(name.to_string());
    lab.nsport_ok(&["add", "--netns", &ns1, "8080:80"]);
    assert_eq!(answer("out", HOST_OUT2), said("ns1"));
    // An address: it takes that address only.
    lab.nsport_ok(&["add", "--force", "--netns", &ns3, "198.51.100.1:8080:80"]);
    assert_eq!(answer("out", HOST_OUT2), said("ns3"));
    assert_eq!(answer("out", HOST_OUT), said("ns1"));
    assert_eq!(answer("host", LOCALHOST), said("ns1"));
    // An interface: it takes what arrives on vo, whatever the address …
    lab.nsport_ok(&["add", "--force", "--netns", &ns2, "--on", "vo", "8080:80"]);
    assert_eq!(answer("out", HOST_OUT), said("ns2"));
    assert_eq!(answer("out", HOST_OUT2), said("ns2"));
    // … and nothing that does not (the host, ns3 through v3).
    assert_eq!(answer("host", HOST_OUT2), said("ns3"));
    assert_eq!(answer("host", HOST_OUT), said("ns1"));
    // An interface and an address: the most specific of all.
    lab.nsport_ok(&[
        "add",
        "--force",
        "--netns",
        &ns3,
        "--on",
        "vo",
        "192.0.2.1:8080:80",
    ]);
    assert_eq!(answer("out", HOST_OUT), said("ns3"));
    assert_eq!(answer("out", HOST_OUT2), said("ns2"));

    // ls says which shadows which.
    let rows: Vec<Value> = serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    let row = |host_addr: Value, on: Value| {
        rows.iter()
            .find(|r| r["host_addr"] == host_addr && r["on"] == on)
            .unwrap_or_else(|| panic!("no row {host_addr} {on} in {rows:?}"))
    };
    let wildcard = row(Value::Null, Value::Null);
    assert_eq!(
        wildcard["shadowed_by"],
        json!([
            "8080/tcp on vo",
            "192.0.2.1:8080/tcp on vo",
            "198.51.100.1:8080/tcp"
        ]),
        "{wildcard}"
    );
    assert_eq!(wildcard["shadows_mappings"], json!([]));
    let on_vo = row(Value::Null, json!("vo"));
    assert_eq!(
        on_vo["shadows_mappings"],
        json!(["8080/tcp", "198.51.100.1:8080/tcp"]),
        "{on_vo}"
    );
    assert_eq!(on_vo["shadowed_by"], json!(["192.0.2.1:8080/tcp on vo"]));
    let listing = lab.nsport_ok(&["ls"]);
    assert!(
        listing
            .lines()
            .any(|line| line.contains("*:8080 ") && line.contains("shadowed by 8080/tcp on vo")),
        "{listing}"
    );
    // The export keeps them forced, so that apply takes them back.
    let exported = lab.nsport_ok(&["export"]);
    assert_eq!(exported.matches(r#""force":true"#).count(), 3, "{exported}");

    // Unpublished, the specific one gives its traffic back.
    lab.nsport_ok(&["rm", "--on", "vo", "192.0.2.1:8080"]);
    lab.nsport_ok(&["rm", "--on", "vo", "8080"]);
    assert_eq!(answer("out", HOST_OUT), said("ns1"));
    assert_eq!(answer("out", HOST_OUT2), said("ns3"));
}

#[test]
fn apply_refuses_a_file_with_overlaps_unless_it_marks_them_forced() {
    let lab = Lab::new(BrNetfilter::On);
    let _server = lab.serve_tcp_named("ns1", 80, "ns1");
    let _other = lab.serve_tcp_named("ns3", 80, "ns3");
    let (ns1, ns3) = (lab.ns("ns1"), lab.ns("ns3"));
    let file = TempFile(lab.state_dir().with_extension("overlap.json"));
    let write = |force: bool| {
        let mut specific = json!({"netns": ns3, "publish": "198.51.100.1:8080:80"});
        if force {
            specific["force"] = json!(true);
        }
        let text = json!({"version": 1, "mappings": [
            {"netns": ns1, "publish": "8080:80"},
            specific,
        ]});
        std::fs::write(&file.0, text.to_string()).unwrap();
    };
    write(false);
    let before = lab.ruleset();
    let output = lab.nsport(&["apply", file.0.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("198.51.100.1:8080/tcp") && stderr.contains("host port 8080/tcp"),
        "{stderr}"
    );
    assert_eq!(lab.ruleset(), before);
    write(true);
    lab.nsport_ok(&["apply", file.0.to_str().unwrap()]);
    assert_eq!(lab.tcp("out", HOST_OUT2, 8080), Some("ns3".into()));
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), Some("ns1".into()));
}

#[test]
fn cni_add_refuses_overlaps_in_either_order_naming_the_holder() {
    let mut lab = Lab::new(BrNetfilter::On);
    lab.add_namespace("ctr1");
    lab.add_namespace("ctr2");
    let one = lab.cni_attach("c1", &lab.ns("ctr1"));
    let two = lab.cni_attach("c2", &lab.ns("ctr2"));
    let nsport = env!("CARGO_BIN_EXE_nsport");
    let config = |result: &Value, ports: Value| {
        json!({
            "cniVersion": "1.0.0",
            "name": "labnet",
            "type": "nsport",
            "runtimeConfig": {"portMappings": ports},
            "prevResult": result,
        })
    };
    let add = |container: &str, netns: &str, config: &Value| {
        let output = lab.cni(nsport, "ADD", container, netns, config);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.success(), stdout)
    };
    // The CLI holds the wildcard: a container's 127.0.0.1 on that port is refused.
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "8080:80"]);
    let before = lab.ruleset();
    let (ok, out) = add(
        "c1",
        &lab.ns("ctr1"),
        &config(
            &one,
            json!([{"hostPort": 8080, "containerPort": 80, "hostIP": "127.0.0.1"}]),
        ),
    );
    let error: Value = serde_json::from_str(&out).unwrap();
    let msg = error["msg"].as_str().unwrap_or_default();
    assert!(!ok && error["code"] == 100, "{out}");
    assert!(
        msg.contains("host port 8080/tcp") && msg.contains("172.18.0.2:80"),
        "{out}"
    );
    assert_eq!(lab.ruleset(), before);

    // A container holds 127.0.0.1:4000: another container's wildcard is refused, naming
    // it; so is the CLI's, unless forced.
    let (ok, out) = add(
        "c1",
        &lab.ns("ctr1"),
        &config(
            &one,
            json!([{"hostPort": 4000, "containerPort": 80, "hostIP": "127.0.0.1"}]),
        ),
    );
    assert!(ok, "{out}");
    let before = lab.ruleset();
    let (ok, out) = add(
        "c2",
        &lab.ns("ctr2"),
        &config(&two, json!([{"hostPort": 4000, "containerPort": 80}])),
    );
    let error: Value = serde_json::from_str(&out).unwrap();
    let msg = error["msg"].as_str().unwrap_or_default();
    assert!(!ok && error["code"] == 100, "{out}");
    assert!(
        msg.contains("127.0.0.1:4000/tcp") && msg.contains("container c1"),
        "{out}"
    );
    assert_eq!(lab.ruleset(), before);
    refused(
        &lab,
        &["add", "--netns", &lab.ns("ns1"), "4000:80"],
        &["127.0.0.1:4000/tcp", "c1"],
    );
    lab.nsport_ok(&["add", "--force", "--netns", &lab.ns("ns1"), "4000:80"]);
    // One configuration asking for both is refused too.
    let (ok, out) = add(
        "c2",
        &lab.ns("ctr2"),
        &config(
            &two,
            json!([
                {"hostPort": 5000, "containerPort": 80},
                {"hostPort": 5000, "containerPort": 80, "hostIP": "127.0.0.1"},
            ]),
        ),
    );
    assert!(!ok && out.contains("5000/tcp"), "{out}");
}

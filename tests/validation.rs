//! One validation path for every entry point: what `add` refuses, `apply` refuses too, with
//! the same exit code and nothing changed; Docker's "every address" forms; and dual-stack
//! bookkeeping that follows each family on its own.

mod lab;

use lab::{ANY, BrNetfilter, HOST_OUT, Lab, OUT, some, v6};

/// The ruleset and the host's route_localnet and forwarding settings, for "nothing changed".
fn kernel_state(lab: &Lab) -> String {
    let mut state = lab.nft("host", "list ruleset");
    for key in [
        "net/ipv4/ip_forward",
        "net/ipv4/conf/br0/route_localnet",
        "net/ipv4/conf/v3/route_localnet",
        "net/ipv4/conf/all/route_localnet",
    ] {
        state.push_str(&format!("{key}={}\n", lab.read_sysctl("host", key)));
    }
    state
}

/// Runs nsport expecting a usage error (exit 2) whose one stderr line names `what`, and
/// checks that the kernel is as it was.
fn refused(lab: &Lab, args: &[&str], what: &str) {
    let before = kernel_state(lab);
    let output = lab.nsport(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.contains(what), "{args:?}: {stderr}");
    assert_eq!(kernel_state(lab), before, "{args:?} changed the kernel");
}

fn file(lab: &Lab, name: &str, text: &str) -> String {
    let dir = lab.state_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn add_and_apply_refuse_the_same_targets_and_interfaces() {
    let lab = Lab::new(BrNetfilter::Off);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    for (target, what) in [
        ("127.0.0.1", "loopback"),
        ("172.18.0.255", "broadcast"),
        ("255.255.255.255", "broadcast"),
        ("224.0.0.1", "multicast"),
        ("169.254.1.1", "link-local"),
        ("0.0.0.0", "unspecified"),
    ] {
        refused(&lab, &["add", "--to", target, "8080:80"], what);
        let mappings = format!(
            r#"{{"version": 1, "mappings": [{{"to": "{target}", "publish": "8080:80"}}]}}"#
        );
        refused(&lab, &["apply", &file(&lab, "to.json", &mappings)], what);
        // The older `ls --json` form of the file goes through the same checks.
        let listing = format!(
            r#"[{{"proto": "tcp", "host_addr": null, "host_port": 8080, "to_addr": "{target}",
                "to_port": 80, "via": "v3"}}]"#
        );
        refused(&lab, &["apply", &file(&lab, "ls.json", &listing)], what);
    }
    for via in ["all", "default", "a/b", "eth0:1", "sixteen-bytes-xx"] {
        refused(
            &lab,
            &["add", "--to", "10.77.0.2", "--via", via, "8080:80"],
            via,
        );
        let mappings = format!(
            r#"{{"version": 1, "mappings": [{{"to": "10.77.0.2", "via": "{via}", "publish": "8080:80"}}]}}"#
        );
        refused(&lab, &["apply", &file(&lab, "via.json", &mappings)], via);
    }
    // The interface to publish on need not exist, but must be a name Linux and nft take,
    // and not the loopback.
    for on in ["a/b", "eth0:1", "sixteen-bytes-xx", "eth*", "lo"] {
        refused(
            &lab,
            &["add", "--to", "10.77.0.2", "--on", on, "8080:80"],
            on,
        );
        let mappings = format!(
            r#"{{"version": 1, "mappings": [{{"to": "10.77.0.2", "on": "{on}", "publish": "8080:80"}}]}}"#
        );
        refused(&lab, &["apply", &file(&lab, "on.json", &mappings)], on);
    }
}

#[test]
fn every_address_of_one_family_as_docker_writes_it() {
    let lab = Lab::dual_stack(BrNetfilter::Off);
    let _server = lab.serve_tcp("ns1", ANY, 80);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "0.0.0.0:8080:80"]);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "[::]:8081:80"]);
    let listing: serde_json::Value =
        serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    let families: Vec<(u64, String)> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert!(m["host_addr"].is_null(), "{m}");
            (
                m["host_port"].as_u64().unwrap(),
                m["to_addr"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        families,
        vec![
            (8080, "172.18.0.2".to_string()),
            (8081, "2001:db8:1::2".to_string())
        ]
    );
    // The server listens on both families, so it sees an IPv4 client as ::ffff:A.B.C.D.
    let ipv4_client = lab.tcp("out", HOST_OUT, 8080).unwrap_or_default();
    assert!(ipv4_client.ends_with(&OUT.to_string()), "{ipv4_client}");
    assert_eq!(lab.tcp("out", v6::HOST_OUT, 8081), some(v6::OUT));
    assert_eq!(lab.tcp("out", v6::HOST_OUT, 8080), None);
    assert_eq!(lab.tcp("out", HOST_OUT, 8081), None);
    // And `rm 0.0.0.0:8080` removes that family's mapping only.
    lab.nsport_ok(&["rm", "0.0.0.0:8080"]);
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), None);
    assert_eq!(lab.tcp("out", v6::HOST_OUT, 8081), some(v6::OUT));
}

fn hairpin_mode(lab: &Lab, port: &str) -> bool {
    lab.ip_output("host", &format!("-d link show {port}"))
        .contains("hairpin on")
}

#[test]
fn dual_stack_keeps_hairpin_until_both_families_go() {
    let lab = Lab::dual_stack(BrNetfilter::On);
    let _server = lab.serve_tcp("ns1", ANY, 3000);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "192.0.2.1:3000:3000",
        "[2001:db8::1]:3000:3000",
    ]);
    assert!(hairpin_mode(&lab, "v1"));
    lab.nsport_ok(&["rm", "192.0.2.1:3000"]);
    // The IPv6 mapping still needs it: ns1 reaches itself through the host.
    assert!(hairpin_mode(&lab, "v1"));
    assert!(lab.tcp("ns1", v6::HOST_OUT, 3000).is_some());
    lab.nsport_ok(&["rm", "[2001:db8::1]:3000"]);
    assert!(!hairpin_mode(&lab, "v1"));
}

#[test]
fn rm_netns_follows_the_mappings_not_the_current_addresses() {
    let lab = Lab::dual_stack(BrNetfilter::Off);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "3000"]);
    // The namespace's interface loses its IPv6 address after the publish.
    lab.ip("ns1", "addr del 2001:db8:1::2/64 dev eth0");
    lab.nsport_ok(&["rm", "--netns", &ns1]);
    let listing: serde_json::Value =
        serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    assert_eq!(listing, serde_json::json!([]));
}

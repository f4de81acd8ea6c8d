//! The operator's tools: apply/export round trips, dry runs that touch nothing, counters,
//! doctor, completions, the manual page and verbose logging. Real binary, real labs.

mod lab;

use lab::*;
use std::net::Ipv4Addr;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

/// The listing without what traffic and time change (counters, status).
fn mappings_only(lab: &Lab) -> serde_json::Value {
    let mut listing = json(&lab.nsport_ok(&["ls", "--json"]));
    for entry in listing.as_array_mut().unwrap() {
        let entry = entry.as_object_mut().unwrap();
        for key in ["packets", "bytes", "stale", "shadows"] {
            entry.remove(key);
        }
    }
    listing
}

/// Everything nsport may change in the lab's host namespace.
fn host_state(lab: &Lab) -> String {
    let mut state = lab.ruleset();
    for key in [
        "net/ipv4/ip_forward",
        "net/ipv6/conf/all/forwarding",
        "net/ipv4/conf/br0/route_localnet",
        "net/ipv4/conf/v3/route_localnet",
    ] {
        state.push_str(&format!("{key}={}\n", lab.read_sysctl("host", key)));
    }
    state
}

fn save(lab: &Lab, name: &str, text: &str) -> String {
    let path = lab.state_dir().join(name);
    std::fs::create_dir_all(lab.state_dir()).unwrap();
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn publish_sample(lab: &Lab) {
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "3000",
        "127.0.0.1:4000:3000",
        "5353:53/udp",
    ]);
    lab.nsport_ok(&["add", "--to", "10.77.0.2", "--allow-direct", "8080:3000"]);
}

#[test]
fn ls_json_applied_back_round_trips() {
    let lab = Lab::new(BrNetfilter::On);
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    publish_sample(&lab);
    let saved = lab.nsport_ok(&["ls", "--json"]);
    let file = save(&lab, "mappings.json", &saved);
    let before = mappings_only(&lab);
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), some(OUT));
    let table_before = lab.ruleset();

    lab.nsport_ok(&["flush"]);
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), None);
    lab.nsport_ok(&["apply", &file]);
    assert_eq!(mappings_only(&lab), before);
    assert_eq!(lab.ruleset(), table_before);
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), some(OUT));
    assert_eq!(lab.tcp("host", LOCALHOST, 4000), some(HOST_BR));

    // Applying the same file again changes nothing, not even the counters.
    let counted = json(&lab.nsport_ok(&["ls", "--json"]));
    assert!(counted[0]["packets"].as_u64().unwrap() > 0, "{counted}");
    lab.nsport_ok(&["apply", &file]);
    assert_eq!(json(&lab.nsport_ok(&["ls", "--json"])), counted);

    // A file with one mapping fewer and one more: exactly that changes.
    let mut edited = json(&saved);
    let list = edited.as_array_mut().unwrap();
    list.retain(|m| m["host_port"] != 5353);
    let mut extra = list[0].clone();
    extra["host_port"] = 3001.into();
    list.push(extra);
    lab.nsport_ok(&["apply", &save(&lab, "edited.json", &edited.to_string())]);
    let ports: Vec<u64> = json(&lab.nsport_ok(&["ls", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["host_port"].as_u64().unwrap())
        .collect();
    // Wildcard mappings first, then those on one host address.
    assert_eq!(ports, [3000, 3001, 8080, 4000]);
    assert_eq!(lab.tcp("out", HOST_OUT, 3001), some(OUT));
    // The kept mapping was not re-created: its counter went on from where it was.
    let after = json(&lab.nsport_ok(&["ls", "--json"]));
    assert!(after[0]["packets"].as_u64() >= counted[0]["packets"].as_u64());

    // An empty file empties the table and puts back what nsport changed.
    lab.nsport_ok(&["apply", &save(&lab, "empty.json", "[]")]);
    assert_eq!(json(&lab.nsport_ok(&["ls", "--json"])), json("[]"));
    assert_eq!(
        lab.read_sysctl("host", "net/ipv4/conf/br0/route_localnet"),
        "0"
    );
}

#[test]
fn apply_refuses_a_bad_file_whole() {
    let lab = Lab::new(BrNetfilter::Off);
    publish_sample(&lab);
    let before = host_state(&lab);
    let mut listing = json(&lab.nsport_ok(&["ls", "--json"]));
    // The same host port twice, to two targets.
    let mut twin = listing[0].clone();
    twin["to_port"] = 9.into();
    listing.as_array_mut().unwrap().push(twin);
    for (name, text) in [
        ("dup.json", listing.to_string()),
        ("broken.json", "[{\"proto\": \"tcp\"".to_string()),
        ("dccp.json", "[{\"proto\":\"dccp\",\"host_addr\":null,\"host_port\":1,\"to_addr\":\"10.77.0.2\",\"to_port\":1,\"via\":\"v3\"}]".to_string()),
    ] {
        let output = lab.nsport(&["apply", &save(&lab, name, &text)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    assert_eq!(host_state(&lab), before);
}

#[test]
fn dry_runs_touch_nothing_and_print_loadable_nft() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    let before = host_state(&lab);
    let add = [
        "add",
        "--netns",
        &ns1,
        "--dry-run",
        "3000",
        "127.0.0.1:4000:3000",
    ];
    let script = lab.nsport_ok(&add);
    assert_eq!(host_state(&lab), before);
    assert!(
        script.contains("add element inet nsport any4 { tcp . 3000 comment"),
        "{script}"
    );
    assert!(
        script.contains("# sysctl net.ipv4.conf.br0.route_localnet=1"),
        "{script}"
    );
    // The plan is what the real command does: loaded into another lab with nft, it makes
    // the same table.
    let twin = Lab::new(BrNetfilter::On);
    twin.nft("host", &format!("-f {}", save(&twin, "plan.nft", &script)));
    lab.nsport_ok(&["add", "--netns", &ns1, "3000", "127.0.0.1:4000:3000"]);
    let made = lab.nft("host", "list table inet nsport");
    let loaded = twin.nft("host", "list table inet nsport");
    // Both name the first lab's namespace, which the dry run resolved.
    assert_eq!(lab.normalize(&loaded), lab.normalize(&made));

    let before = host_state(&lab);
    for args in [
        vec!["rm", "--dry-run", "3000"],
        vec!["rm", "--dry-run", "--netns", &ns1],
        vec!["flush", "--dry-run"],
        vec!["apply", "--dry-run", &save(&lab, "empty.json", "[]")],
    ] {
        let printed = lab.nsport_ok(&args);
        assert!(printed.contains("delete"), "{args:?}: {printed}");
        assert_eq!(host_state(&lab), before, "{args:?}");
    }
    let flush = lab.nsport_ok(&["flush", "--dry-run"]);
    assert!(flush.contains("delete table inet nsport"), "{flush}");
    assert!(
        flush.contains("# sysctl net.ipv4.conf.br0.route_localnet=0"),
        "{flush}"
    );
    let rm = lab.nsport_ok(&["rm", "--dry-run", "3000"]);
    assert!(
        rm.contains("delete element inet nsport any4 { tcp . 3000 }"),
        "{rm}"
    );
}

#[test]
fn export_nft_recreates_the_table_elsewhere() {
    let lab = Lab::dual_stack(BrNetfilter::On);
    publish_sample(&lab);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "[2001:db8::1]:8443:3000"]);
    let script = lab.nsport_ok(&["export", "--nft"]);
    let twin = Lab::dual_stack(BrNetfilter::On);
    let path = save(&twin, "export.nft", &script);
    twin.nft("host", &format!("-f {path}"));
    // Loading it twice is harmless: the script replaces the table.
    twin.nft("host", &format!("-f {path}"));
    let original = lab.normalize(&lab.nft("host", "list table inet nsport"));
    let copy = lab.normalize(&twin.nft("host", "list table inet nsport"));
    assert_eq!(
        without_counter_values(&copy),
        without_counter_values(&original)
    );
    // And the export file records the same mappings as intent: names and specs.
    let file = json(&lab.nsport_ok(&["export"]));
    assert_eq!(file["version"], 1, "{file}");
    let entries = file["mappings"].as_array().unwrap();
    let ns1 = lab.ns("ns1");
    for (netns, publish) in [
        (ns1.as_str(), "3000:3000/tcp"),
        (&ns1, "127.0.0.1:4000:3000/tcp"),
        (&ns1, "[2001:db8::1]:8443:3000/tcp"),
        (&ns1, "5353:53/udp"),
    ] {
        assert!(
            entries
                .iter()
                .any(|e| e["netns"] == netns && e["publish"] == publish),
            "{publish}: {file}"
        );
    }
    assert!(
        entries
            .iter()
            .all(|e| e.get("netns_inode").is_none() && e.get("packets").is_none()),
        "{file}"
    );
}

#[test]
fn counters_follow_each_mappings_traffic_both_ways() {
    let lab = Lab::new(BrNetfilter::Off);
    // A server that sends 200 kB on each connection.
    let listener = lab.run_in("ns1", || {
        std::net::TcpListener::bind(("0.0.0.0", 3000)).unwrap()
    });
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten().take(2) {
            let _ = std::io::Write::write_all(&mut stream, &vec![7u8; 200_000]);
        }
    });
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000", "3001:3000"]);
    for from in ["out", "host"] {
        let addr = if from == "out" { HOST_OUT } else { LOCALHOST };
        let got = lab.run_in(from, || {
            let mut stream = std::net::TcpStream::connect((addr, 3000)).unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut stream, &mut data).unwrap();
            data.len()
        });
        assert_eq!(got, 200_000, "from {from}");
        let listing = json(&lab.nsport_ok(&["ls", "--json"]));
        let bytes = listing[0]["bytes"].as_u64().unwrap();
        let packets = listing[0]["packets"].as_u64().unwrap();
        let expected = if from == "out" { 200_000 } else { 400_000 };
        assert!(
            bytes >= expected && bytes < expected + expected / 5,
            "{from}: {listing}"
        );
        assert!(packets >= 8, "{from}: {listing}");
        assert_eq!(listing[1]["bytes"], 0, "the other mapping saw nothing");
    }
    assert!(lab.nsport_ok(&["ls"]).contains("BYTES"));
}

#[test]
fn doctor_passes_a_healthy_host_and_names_planted_problems() {
    let lab = Lab::new(BrNetfilter::On);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns3"), "3001"]);
    let healthy = lab.nsport(&["doctor", "--json"]);
    let checks = json(&String::from_utf8_lossy(&healthy.stdout));
    assert_eq!(healthy.status.code(), Some(0), "{checks}");
    assert!(
        checks.as_array().unwrap().iter().all(|c| c["ok"] == true),
        "{checks}"
    );
    let names: Vec<&str> = checks
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    for name in [
        "privilege",
        "nftables",
        "ipv4 forwarding",
        "br_netfilter",
        "other firewalls",
        "stale mappings",
        "loopback guard",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }

    // Planted: a forward chain that drops, hairpin mode turned off, a deleted namespace.
    lab.nft("host", "add table ip filter");
    lab.nft(
        "host",
        "add chain ip filter FORWARD { type filter hook forward priority 0 ; policy drop ; }",
    );
    lab.ip("host", "link set v1 type bridge_slave hairpin off");
    sh(&["ip", "netns", "del", &lab.ns("ns3")]);
    let sick = lab.nsport(&["doctor", "--json"]);
    assert_eq!(sick.status.code(), Some(1));
    let checks = json(&String::from_utf8_lossy(&sick.stdout));
    let failed: Vec<(&str, &str)> = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| (c["check"].as_str().unwrap(), c["fix"].as_str().unwrap()))
        .collect();
    assert!(
        failed.contains(&(
            "other firewalls",
            "nft insert rule ip filter FORWARD ct status dnat accept"
        )),
        "{failed:?}"
    );
    assert!(
        failed.contains(&(
            "br_netfilter",
            "ip link set v1 type bridge_slave hairpin on"
        )),
        "{failed:?}"
    );
    assert!(
        failed.contains(&("stale mappings", "nsport prune")),
        "{failed:?}"
    );
    assert_eq!(failed.len(), 3, "{failed:?}");
    // The human form says the same, with the fixes.
    let text = String::from_utf8(lab.nsport(&["doctor"]).stdout).unwrap();
    assert!(
        text.contains("FAIL other firewalls") && text.contains("fix: nsport prune"),
        "{text}"
    );
}

#[test]
fn completions_and_manual_page() {
    let lab = Lab::new(BrNetfilter::Off);
    for shell in ["bash", "zsh", "fish"] {
        let script = lab.nsport_ok(&["completions", shell]);
        assert!(
            script.contains("nsport") && script.contains("apply"),
            "{shell}"
        );
        assert!(script.contains("nsport __complete"), "{shell}");
        for kind in ["netns", "iface", "published"] {
            assert!(script.contains(kind), "{shell} completes {kind}");
        }
    }
    // The manual: a page of its own, with what clap cannot generate, that man renders
    // without a warning.
    let page = lab.nsport_ok(&["man"]);
    for section in [
        ".SH SYNOPSIS",
        ".SH PUBLISH",
        ".SH COMMANDS",
        ".SH THE MAPPINGS FILE",
        ".SH EXAMPLES",
        ".SH EXIT STATUS",
        ".SH FILES",
        ".SH SEE ALSO",
    ] {
        assert!(page.contains(section), "{section} missing");
    }
    for command in [
        "add", "rm", "ls", "flush", "prune", "export", "apply", "doctor",
    ] {
        assert!(
            page.contains(&format!("\\fBnsport {command}\\fR")),
            "{command} missing"
        );
    }
    // Each command's options, which clap builds only for the command parsed: the page
    // builds them all first.
    for option in [
        "\\fB\\-\\-allow\\-from CIDR\\fR",
        "\\fB\\-\\-skip\\-missing\\fR",
        "\\fB\\-\\-json\\fR",
    ] {
        assert!(page.contains(option), "{option} missing");
    }
    assert!(
        !page.contains("nsport-add(1)"),
        "no pages that do not exist"
    );
    let path = save(&lab, "nsport.1", &page);
    let rendered = std::process::Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", &path])
        .output()
        .unwrap();
    assert!(rendered.status.success());
    assert_eq!(
        String::from_utf8_lossy(&rendered.stderr),
        "",
        "groff warnings"
    );
    // Without grotty's overstriking (bold is `c\bc`).
    let mut text = String::new();
    for c in String::from_utf8_lossy(&rendered.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    assert!(
        text.contains("::80, 127.0.0.1::80"),
        "the PUBLISH forms: {text}"
    );
    assert_eq!(lab.nsport(&["completions", "tcsh"]).status.code(), Some(2));
}

/// The completion scripts complete namespace names, interface names and published ports,
/// asking nsport while completing: bash, driven as bash drives it.
#[test]
fn bash_completes_namespaces_interfaces_and_published_ports() {
    let lab = Lab::new(BrNetfilter::Off);
    lab.nsport_ok(&[
        "add",
        "--to",
        "10.77.0.2",
        "3000",
        "127.0.0.1:4000:3000/udp",
    ]);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_nsport"))
        .parent()
        .unwrap();
    let complete = |words: &[&str]| -> Vec<String> {
        let script = format!(
            "source <(nsport completions bash); COMP_WORDS=({}); COMP_CWORD={}; \
             _nsport_dynamic nsport; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            words
                .iter()
                .map(|w| format!("'{w}'"))
                .collect::<Vec<_>>()
                .join(" "),
            words.len() - 1
        );
        let output = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.ns("host"), "bash", "-c", &script])
            .env(
                "PATH",
                format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
            )
            .env("NSPORT_STATE_DIR", lab.state_dir())
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(String::from)
            .collect()
    };
    let prefix = lab.ns("ns");
    let namespaces = complete(&["nsport", "add", "--netns", &prefix]);
    assert!(namespaces.contains(&lab.ns("ns1")), "{namespaces:?}");
    assert!(
        namespaces.iter().all(|n| n.starts_with(&prefix)),
        "{namespaces:?}"
    );
    assert_eq!(complete(&["nsport", "add", "--via", "br"]), ["br0"]);
    assert_eq!(
        complete(&["nsport", "rm", ""]),
        ["3000/tcp", "127.0.0.1:4000/udp"]
    );
}

#[test]
fn verbose_logs_netlink_and_sysctl_changes() {
    let lab = Lab::new(BrNetfilter::Off);
    let quiet = lab.nsport(&["add", "--netns", &lab.ns("ns1"), "192.0.2.1:3000:3000"]);
    assert!(quiet.stderr.is_empty());
    let loud = lab.nsport(&[
        "-v",
        "add",
        "--netns",
        &lab.ns("ns1"),
        "127.0.0.1:4000:3000",
    ]);
    let stderr = String::from_utf8_lossy(&loud.stderr);
    assert!(stderr.contains("add element inet nsport addr4"), "{stderr}");
    assert!(
        stderr.contains("sysctl net.ipv4.conf.br0.route_localnet=1"),
        "{stderr}"
    );
    assert!(loud.stdout.is_empty());
    // After the command too, where each command declares `-v` itself (rm is parsed by
    // clap, the add by nsport's own parser of the common shapes).
    let after = lab.nsport(&["add", "--netns", &lab.ns("ns1"), "5000:3000", "-v"]);
    assert!(after.status.success());
    let stderr = String::from_utf8_lossy(&after.stderr);
    assert!(stderr.contains("add element inet nsport any4"), "{stderr}");
    let after = lab.nsport(&["rm", "127.0.0.1:4000", "-v"]);
    assert!(after.status.success());
    let stderr = String::from_utf8_lossy(&after.stderr);
    assert!(
        stderr.contains("delete element inet nsport addr4"),
        "{stderr}"
    );
}

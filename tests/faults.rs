//! Faults, races and hostile neighbours: nothing half-applied, nothing lost, nothing
//! exposed. Each test makes real traffic in a fresh lab (see `lab/mod.rs`).

mod lab;

use lab::*;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

/// Everything nsport may change in the host namespace: the ruleset, forwarding,
/// route_localnet on each interface toward a target, and hairpin mode of ns1's port.
fn kernel_state(lab: &Lab) -> String {
    let mut state = lab.ruleset();
    for key in [
        "net/ipv4/ip_forward",
        "net/ipv4/conf/br0/route_localnet",
        "net/ipv4/conf/v3/route_localnet",
    ] {
        state.push_str(&format!("{key}={}\n", lab.read_sysctl("host", key)));
    }
    state.push_str(&lab.hairpin_mode("v1"));
    state
}

#[test]
fn a_failing_add_changes_nothing() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    // No table yet: a command that fails half-way must not even create it.
    let before = kernel_state(&lab);
    for args in [
        vec![
            "add",
            "--netns",
            &ns1,
            "3000",
            "127.0.0.1:4000:3000",
            "3000:3001",
        ],
        vec!["add", "--netns", &ns1, "3000", "4000", "70000"],
        vec!["add", "--netns", &ns1, "3000", "203.0.113.1:80:80"],
    ] {
        assert!(!lab.nsport(&args).status.success(), "{args:?}");
        assert_eq!(kernel_state(&lab), before, "{args:?}");
    }
    // With a table: C conflicts with an existing mapping, so A and B are not added either.
    lab.nsport_ok(&["add", "--to", "10.77.0.2", "5000"]);
    let before = kernel_state(&lab);
    let output = lab.nsport(&[
        "add",
        "--netns",
        &ns1,
        "3000",
        "127.0.0.1:4000:3000",
        "5000",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(kernel_state(&lab), before);
    // rm of a present and an absent mapping removes neither.
    assert_eq!(lab.nsport(&["rm", "5000", "5001"]).status.code(), Some(2));
    assert_eq!(kernel_state(&lab), before);
}

#[test]
fn fifty_concurrent_adds_all_land() {
    let lab = Lab::new(BrNetfilter::On);
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    let ns1 = lab.ns("ns1");
    let specs: Vec<String> = (0..50).map(|i| format!("{}:3000", 10000 + i)).collect();
    // All start before any finishes, on a host with no table yet.
    let children: Vec<_> = specs
        .iter()
        .map(|spec| lab.spawn_nsport(&["add", "--netns", &ns1, spec]))
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let listing: serde_json::Value =
        serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    assert_eq!(listing.as_array().unwrap().len(), 50);
    for i in 0..50 {
        assert_eq!(
            lab.tcp("out", HOST_OUT, 10000 + i),
            some(OUT),
            "port {}",
            10000 + i
        );
    }
    // Exactly one creator wrote the chains and rules.
    let table = lab.nft("host", "list table inet nsport");
    assert_eq!(table.matches("jump publish").count(), 2, "{table}");
}

#[test]
fn ten_racing_publishers_of_one_port_one_wins() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    let specs: Vec<String> = (0..10).map(|i| format!("4000:{}", 3000 + i)).collect();
    let children: Vec<_> = specs
        .iter()
        .map(|spec| lab.spawn_nsport(&["add", "--netns", &ns1, spec]))
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .collect();
    let winners = outputs.iter().filter(|o| o.status.success()).count();
    assert_eq!(winners, 1);
    for output in outputs.iter().filter(|o| !o.status.success()) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("host port 4000/tcp is already published to 172.18.0.2:30"),
            "{stderr}"
        );
    }
    let listing: serde_json::Value =
        serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    assert_eq!(listing.as_array().unwrap().len(), 1);
}

#[test]
fn overlapping_ranges_conflict_and_name_the_holder() {
    let lab = Lab::new(BrNetfilter::Off);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "5000-5005:6000-6005"]);
    let before = lab.ruleset();
    // An identity range is one element: the clash is named by its first port held.
    let output = lab.nsport(&["add", "--to", "10.77.0.2", "5003-5010"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("host port 5003-5010/tcp is already published to 172.18.0.2:6003 via br0")
            && stderr.contains("by host port 5003/tcp"),
        "{stderr}"
    );
    // A shifted range is one element per port, named as the kernel refuses it.
    let output = lab.nsport(&["add", "--to", "10.77.0.2", "5003-5010:7003-7010"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("host port 5003/tcp is already published to 172.18.0.2:6003 via br0"),
        "{stderr}"
    );
    assert_eq!(lab.ruleset(), before);
    // The identical range again is fine and changes nothing.
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "5000-5005:6000-6005"]);
    assert_eq!(lab.ruleset(), before);
}

#[test]
fn host_port_in_use_is_refused_unless_forced() {
    let lab = Lab::new(BrNetfilter::Off);
    let ns1 = lab.ns("ns1");
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    let _host_tcp = lab.serve_tcp("host", Ipv4Addr::UNSPECIFIED, 3000);
    let _host_udp = lab.serve_udp("host", HOST_OUT, 5353);
    let before = lab.ruleset();
    let pid = format!("pid {}", std::process::id());
    for (spec, at) in [("3000", "0.0.0.0:3000"), ("5353:53/udp", "192.0.2.1:5353")] {
        let output = lab.nsport(&["add", "--netns", &ns1, spec]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&pid) && stderr.contains(at), "{stderr}");
        assert!(stderr.contains("--force"), "{stderr}");
    }
    assert_eq!(lab.ruleset(), before);
    // The host's socket answers for itself until nsport is forced to publish over it.
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), some(OUT));
    lab.nsport_ok(&["add", "--netns", &ns1, "--force", "3000"]);
    let listing: serde_json::Value =
        serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    assert!(
        listing[0]["shadows"].as_str().unwrap().contains(&pid),
        "{listing}"
    );
    // A listener started after the publish is marked too; one on another port is not.
    lab.nsport_ok(&["add", "--netns", &ns1, "3001:3000", "3002:3000"]);
    let _later = lab.serve_tcp("host", LOCALHOST, 3001);
    let listing: serde_json::Value =
        serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    assert!(
        listing[1]["shadows"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:3001")
    );
    assert_eq!(listing[2]["shadows"], serde_json::Value::Null);
    assert!(lab.nsport_ok(&["ls"]).contains("shadows"));
}

/// Sends on `socket` every 100 ms until an answer comes or `limit` passes; returns how
/// long the first answer took.
fn first_answer(socket: &UdpSocket, to: (Ipv4Addr, u16), limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0; 64];
    while start.elapsed() < limit {
        socket.send_to(b"?", to).unwrap();
        if socket.recv_from(&mut buf).is_ok() {
            return Some(start.elapsed());
        }
    }
    None
}

#[test]
fn running_udp_flows_follow_add_and_rm_within_a_second() {
    let lab = Lab::new(BrNetfilter::Off);
    let _server = lab.serve_udp("ns1", Ipv4Addr::UNSPECIFIED, 53);
    let flow = lab.udp_socket("out");
    let host = (HOST_OUT, 5353);
    // The flow runs, unanswered, before anything is published: its conntrack entry
    // leads to the host itself.
    assert_eq!(first_answer(&flow, host, Duration::from_millis(500)), None);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "5353:53/udp"]);
    let took = first_answer(&flow, host, Duration::from_secs(1));
    assert!(
        took.is_some(),
        "the running flow never reached the namespace"
    );
    // Another flow, to another mapping, must survive the rm of this one.
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "5354:53/udp"]);
    let other = lab.udp_socket("out");
    assert!(first_answer(&other, (HOST_OUT, 5354), Duration::from_secs(1)).is_some());
    lab.nsport_ok(&["rm", "5353/udp"]);
    // Drain what was in flight, then the flow must go unanswered.
    std::thread::sleep(Duration::from_millis(200));
    let mut buf = [0; 64];
    while flow.recv_from(&mut buf).is_ok() {}
    assert_eq!(first_answer(&flow, host, Duration::from_secs(1)), None);
    assert!(first_answer(&other, (HOST_OUT, 5354), Duration::from_millis(300)).is_some());
}

#[test]
fn unpublished_ports_are_not_reachable_directly_once_forwarding_is_on() {
    let lab = Lab::new(BrNetfilter::Off);
    let _published = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    let _private = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 2222);
    let _outside = lab.serve_tcp("out", Ipv4Addr::UNSPECIFIED, 8000);
    // The outside neighbour routes the namespaces' subnet through the host.
    lab.ip("out", "route add 172.18.0.0/24 via 192.0.2.1");
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    assert_eq!(lab.read_sysctl("host", "net/ipv4/ip_forward"), "1");
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), some(OUT));
    assert_eq!(lab.tcp("out", NS1, 2222), None);
    assert_eq!(lab.tcp("out", NS1, 3000), None);
    // ns1's own connections out still get their replies.
    assert_eq!(lab.tcp("ns1", OUT, 8000), some(NS1));
    // Control: without the forward chain the neighbour does get in.
    lab.nft("host", "delete chain inet nsport forward");
    assert_eq!(lab.tcp("out", NS1, 2222), some(OUT));
    // flush puts forwarding back as nsport found it.
    lab.nsport_ok(&["flush"]);
    assert_eq!(lab.read_sysctl("host", "net/ipv4/ip_forward"), "0");
    // The documented opt-out, for a host that routes to its namespaces on purpose: its
    // forwarding is on before nsport (which then closes nothing), and --allow-direct.
    lab.write_sysctl("host", "net/ipv4/ip_forward", "1");
    lab.nsport_ok(&["add", "--allow-direct", "--netns", &lab.ns("ns1"), "3000"]);
    assert_eq!(lab.tcp("out", NS1, 2222), some(OUT));
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), some(OUT));
}

#[test]
fn cleanup_puts_back_what_nsport_changed() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    let localnet = "net/ipv4/conf/br0/route_localnet";
    // An administrator's own route_localnet on v3 is not nsport's to undo.
    lab.write_sysctl("host", "net/ipv4/conf/v3/route_localnet", "1");
    assert_eq!(lab.hairpin_mode("v1"), "hairpin off");
    lab.nsport_ok(&["add", "--netns", &ns1, "3000", "3001"]);
    lab.nsport_ok(&["add", "--to", "10.77.0.2", "3002"]);
    assert_eq!(lab.read_sysctl("host", localnet), "1");
    assert_eq!(lab.hairpin_mode("v1"), "hairpin on");
    lab.nsport_ok(&["rm", "3000"]);
    assert_eq!(
        lab.read_sysctl("host", localnet),
        "1",
        "3001 still needs it"
    );
    lab.nsport_ok(&["rm", "3001"]);
    assert_eq!(lab.read_sysctl("host", localnet), "0");
    assert_eq!(lab.hairpin_mode("v1"), "hairpin off");
    lab.nsport_ok(&["add", "--netns", &ns1, "3000"]);
    lab.nsport_ok(&["flush"]);
    assert_eq!(lab.read_sysctl("host", localnet), "0");
    assert_eq!(lab.hairpin_mode("v1"), "hairpin off");
    assert_eq!(
        lab.read_sysctl("host", "net/ipv4/conf/v3/route_localnet"),
        "1"
    );
}

#[test]
fn route_localnet_left_without_its_guard_is_noticed() {
    let lab = Lab::new(BrNetfilter::On);
    let _secret = lab.serve_tcp("host", LOCALHOST, 7000);
    let localnet = "net/ipv4/conf/br0/route_localnet";
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    // Someone deletes only the guard: the next command puts it back.
    lab.nft("host", "delete chain inet nsport guard");
    assert_eq!(lab.tcp("ns2", LOCALHOST, 7000), some(NS2));
    let output = lab.nsport(&["ls"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("guard"));
    assert_eq!(lab.tcp("ns2", LOCALHOST, 7000), None);
    // Someone flushes the whole ruleset: the next command resets route_localnet.
    lab.nft("host", "flush ruleset");
    assert_eq!(lab.read_sysctl("host", localnet), "1");
    assert_eq!(lab.tcp("ns2", LOCALHOST, 7000), some(NS2));
    let output = lab.nsport(&["ls", "--json"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("route_localnet on br0"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "[]");
    assert_eq!(lab.read_sysctl("host", localnet), "0");
    assert_eq!(lab.tcp("ns2", LOCALHOST, 7000), None);
}

#[test]
fn mappings_of_deleted_namespaces_are_stale_and_pruned() {
    let lab = Lab::new(BrNetfilter::Off);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "3000"]);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns3"), "3001"]);
    sh(&["ip", "netns", "del", &ns1]);
    let listing: serde_json::Value =
        serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    assert_eq!(listing[0]["stale"], true);
    assert_eq!(listing[1]["stale"], false);
    assert!(lab.nsport_ok(&["ls"]).contains("stale"));
    // A new namespace of the same name is another namespace.
    sh(&["ip", "netns", "add", &ns1]);
    let listing: serde_json::Value =
        serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    assert_eq!(listing[0]["stale"], true);
    lab.nsport_ok(&["prune"]);
    let listing: serde_json::Value =
        serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    assert_eq!(listing.as_array().unwrap().len(), 1);
    assert_eq!(listing[0]["host_port"], 3001);
}

#[test]
fn other_tables_dropping_forwarded_traffic_are_named() {
    let lab = Lab::new(BrNetfilter::Off);
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    lab.nft("host", "add table ip filter");
    lab.nft(
        "host",
        "add chain ip filter FORWARD { type filter hook forward priority 0 ; policy drop ; }",
    );
    let output = lab.nsport(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("table ip filter chain FORWARD"), "{stderr}");
    // The next publish, which finds the ruleset as nsport's own change left it and reads
    // no other table, warns all the same: from what the first one judged.
    let output = lab.nsport(&["add", "--netns", &lab.ns("ns1"), "3001:3000"]);
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stderr), stderr);
    // The warning is true, and its advice works.
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), None);
    lab.nft(
        "host",
        "insert rule ip filter FORWARD ct status dnat accept",
    );
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), some(OUT));
    // Another tool's change is read, and judged again: no warning now.
    let output = lab.nsport(&["add", "--netns", &lab.ns("ns1"), "3002:3000"]);
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    let output = lab.nsport(&["add", "--netns", &lab.ns("ns1"), "3003:3000"]);
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}

#[test]
fn first_publishes_racing_in_one_process_create_one_table() {
    let lab = Lab::new(BrNetfilter::Off);
    // The library keeps its record of changed settings in the lab's directory.
    // SAFETY: every test of this binary that runs nsport in-process sets the same value.
    unsafe { std::env::set_var("NSPORT_STATE_DIR", lab.state_dir()) };
    let target = nsport::Target::Addr(NS1.into());
    let options = nsport::PublishOptions::default();
    for round in 0..5u16 {
        let barrier = std::sync::Barrier::new(8);
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8u16)
                .map(|i| {
                    let (barrier, target, options, lab) = (&barrier, &target, &options, &lab);
                    scope.spawn(move || {
                        let spec = format!("{}:3000", 20000 + round * 100 + i).parse().unwrap();
                        lab.run_in("host", || {
                            // Everything is resolved; the threads meet at the kernel.
                            barrier.wait();
                            nsport::publish(target, options, &[spec])
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for result in results {
            result.unwrap();
        }
        let table = lab.nft("host", "list table inet nsport");
        assert_eq!(
            table.matches("jump publish").count(),
            2,
            "round {round}: {table}"
        );
        lab.nsport_ok(&["flush"]);
    }
}

#[test]
fn a_first_publish_of_ten_thousand_ports_lands_whole() {
    // The elements-only attempt fails with one ENOENT per message when there is no table;
    // those answers once overflowed the socket and were read as success.
    let lab = Lab::new(BrNetfilter::Off);
    // A shifted range: one element per port (an identity range is one element).
    let _server = lab.serve_tcp("ns3", Ipv4Addr::UNSPECIFIED, 49999);
    lab.nsport_ok(&["add", "--to", "10.77.0.2", "20000-29999:40000-49999"]);
    let listing: serde_json::Value =
        serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    assert_eq!(listing.as_array().unwrap().len(), 10_000);
    assert_eq!(lab.tcp("out", HOST_OUT, 29999), some(OUT));
    // A conflict deep inside a message of many elements is still named exactly.
    let output = lab.nsport(&["add", "--netns", &lab.ns("ns1"), "29990-30010:39990-40010"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("host port 29990/tcp is already published to 10.77.0.2:49990"),
        "{stderr}"
    );
}

/// The target's bridge port goes away while an `add` waits for the writer lock (its veth
/// deleted, as a namespace's deletion does a moment later): the add fails at setting
/// hairpin mode, takes its mapping out again, and its one line says what failed, on
/// which port, and why.
#[test]
fn a_bridge_port_gone_while_an_add_waits_is_named_and_nothing_changes() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns2"), "8000"]);
    let before = lab.ruleset();
    let output = lab.nsport_waiting_on_lock(&["add", "--netns", &ns1, "8001"], || {
        lab.ip("host", "link del v1");
    });
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stderr}");
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(
            "nsport: nothing was changed: cannot set hairpin mode of bridge port v1: "
        ),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert_eq!(lab.ruleset(), before);
}

/// Deletes ns1's bridge port v1, which takes ns1's end with it, and makes both again as
/// they were (172.18.0.2 in ns1): a port of the same name with another index.
fn remake_v1(lab: &Lab) {
    lab.ip("host", "link del v1");
    let ns1 = lab.ns("ns1");
    lab.ip(
        "host",
        &format!("link add v1 type veth peer name eth0 netns {ns1}"),
    );
    lab.ip("host", "link set v1 master br0");
    lab.ip("host", "link set v1 up");
    lab.ip("ns1", "addr add 172.18.0.2/24 dev eth0");
    lab.ip("ns1", "link set eth0 up");
}

/// A bridge port made again under the same name (`remake_v1`) is not the port nsport
/// turned hairpin mode on: an administrator's hairpin mode on the new one stays when
/// nsport puts its settings back.
#[test]
fn hairpin_put_back_leaves_a_port_made_again_as_it_is() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "8000"]);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns2"), "8002"]);
    assert_eq!(lab.hairpin_mode("v1"), "hairpin on");
    remake_v1(&lab);
    lab.ip("host", "link set v1 type bridge_slave hairpin on");
    lab.nsport_ok(&["rm", "8000"]);
    assert_eq!(lab.hairpin_mode("v1"), "hairpin on", "the administrator's");
    // Control: the port nsport turned on, and that stayed, is put back.
    assert_eq!(lab.hairpin_mode("v2"), "hairpin on");
    lab.nsport_ok(&["flush"]);
    assert_eq!(lab.hairpin_mode("v2"), "hairpin off");
    assert_eq!(lab.hairpin_mode("v1"), "hairpin on", "the administrator's");
}

/// The same port made again, then published to: the record's entry for the old port gives
/// way to the new one, which nsport turned on and puts back.
#[test]
fn hairpin_turned_on_for_a_port_made_again_is_put_back() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "8000"]);
    remake_v1(&lab);
    assert_eq!(lab.hairpin_mode("v1"), "hairpin off");
    lab.nsport_ok(&["add", "--netns", &ns1, "8001"]);
    assert_eq!(lab.hairpin_mode("v1"), "hairpin on");
    lab.nsport_ok(&["rm", "8000", "8001"]);
    assert_eq!(lab.hairpin_mode("v1"), "hairpin off");
}

//! Upgrades: a table written by an older nsport (layout 1, kept in `nft/v1/` as the golden
//! tables of commit 1a55796) is loaded with `nft -f` into the lab its scenario ran in, with
//! the settings that nsport would have left and real servers behind every mapping, and a
//! long-lived TCP connection open through it. This nsport then lists it, changes it (which
//! migrates it in one batch) and must keep every mapping listed and reachable, keep the
//! open connection working, and leave the table its own golden file describes.
//!
//! One difference from the golden tables is expected and checked: layout 1 turned
//! forwarding on without recording it, so this nsport cannot know that forwarding was off
//! before and does not close the family (set `closed` stays empty). Closing it could cut
//! off traffic the administrator forwards.
//!
//! A table claiming a layout newer than this nsport knows is refused by every change and
//! listed, marked, by `ls`.

mod lab;

use lab::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

/// The golden table without the elements of set `closed` (see the module's comment), and
/// without counter values: traffic went through this table.
fn without_closed_elements(table: &str) -> String {
    without_counter_values(&golden_without_closed(table))
}

fn golden_without_closed(table: &str) -> String {
    let mut out = String::new();
    let mut in_closed = false;
    let mut skipping = false;
    for line in table.lines() {
        if line == "\tset closed {" {
            in_closed = true;
        } else if in_closed && line == "\t}" {
            in_closed = false;
        }
        if in_closed && line.trim_start().starts_with("elements = {") {
            skipping = true;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
        if skipping && line.ends_with(" }") {
            skipping = false;
        }
    }
    out
}

fn fixture(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fixture with this lab's namespace names and inodes in place of the placeholders.
fn instantiate(lab: &Lab, table: &str) -> String {
    let mut table = table.to_string();
    for role in ["ns1", "ns2", "ns3"] {
        table = table.replace(
            &format!("netns={role} ino=INODE"),
            &format!("netns={} ino={}", lab.ns(role), lab.netns_inode(role)),
        );
    }
    assert!(!table.contains("INODE"), "{table}");
    table
}

/// Loads a table with `nft -f` in the lab's host.
fn load(lab: &Lab, table: &str) {
    let file = TempFile(std::env::temp_dir().join(format!("{}-table.nft", lab.ns("x"))));
    std::fs::write(&file.0, table).unwrap();
    let path = file.0.to_string_lossy().into_owned();
    sh(&["ip", "netns", "exec", &lab.ns("host"), "nft", "-f", &path]);
}

/// What layout-1 nsport left besides its table: forwarding on (not recorded), route_localnet
/// on each interface of a 127.0.0.1 mapping and hairpin mode on ns1's bridge port, both
/// recorded as layout 1's record has them.
fn v1_settings(lab: &Lab, loopback_vias: &[&str], hairpin_v1: bool, ipv6: bool) {
    lab.write_sysctl("host", "net/ipv4/ip_forward", "1");
    if ipv6 {
        lab.write_sysctl("host", "net/ipv6/conf/all/forwarding", "1");
    }
    let mut route_localnet = serde_json::Map::new();
    for via in loopback_vias {
        lab.write_sysctl("host", &format!("net/ipv4/conf/{via}/route_localnet"), "1");
        route_localnet.insert(via.to_string(), "0".into());
    }
    let mut hairpin = serde_json::Map::new();
    if hairpin_v1 {
        lab.ip("host", "link set v1 type bridge_slave hairpin on");
        hairpin.insert(
            "v1".into(),
            serde_json::json!({"target": NS1.to_string(), "was_on": false}),
        );
    }
    let record = serde_json::json!({"route_localnet": route_localnet, "hairpin": hairpin});
    let cookie = lab.run_in("host", || nsport::netlink::netns_cookie().unwrap());
    std::fs::create_dir_all(lab.state_dir()).unwrap();
    std::fs::write(
        lab.state_dir().join(format!("netns-{cookie}.json")),
        record.to_string(),
    )
    .unwrap();
}

/// A TCP server that tells each client its address, then echoes every line until the
/// client goes: probes read one line, a long-lived connection keeps talking.
struct EchoServer {
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    fn start(lab: &Lab, role: &str, at: SocketAddr) -> EchoServer {
        let listener = lab.run_in(role, || TcpListener::bind(at).expect("bind"));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        std::thread::spawn(move || {
                            stream.set_nonblocking(false).unwrap();
                            let mut writer = stream.try_clone().unwrap();
                            let _ = writeln!(writer, "{}", peer.ip());
                            for line in BufReader::new(stream).lines() {
                                let Ok(line) = line else { break };
                                if writeln!(writer, "{line}").is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        EchoServer { stop }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A connection through a published port, kept open across the whole test.
struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    turns: u32,
}

impl Connection {
    fn open(lab: &Lab, role: &str, addr: IpAddr, port: u16) -> Connection {
        let stream = lab.run_in(role, || {
            TcpStream::connect_timeout(&SocketAddr::from((addr, port)), Duration::from_secs(2))
                .expect("the long-lived connection opens")
        });
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        let mut hello = String::new();
        reader.read_line(&mut hello).unwrap();
        Connection {
            reader,
            writer,
            turns: 0,
        }
    }

    /// Whether the connection still carries a line there and back.
    fn still_works(&mut self) -> bool {
        self.turns += 1;
        let line = format!("turn {}", self.turns);
        if writeln!(self.writer, "{line}").is_err() {
            return false;
        }
        let mut answer = String::new();
        self.reader.read_line(&mut answer).is_ok() && answer.trim_end() == line
    }
}

/// Connects from `role` and returns the first line the server sends (the client address
/// it saw), or `None` when nothing answered.
fn probe_tcp(lab: &Lab, role: &str, addr: IpAddr, port: u16) -> Option<String> {
    lab.run_in(role, || {
        let stream =
            TcpStream::connect_timeout(&SocketAddr::from((addr, port)), Duration::from_millis(800))
                .ok()?;
        stream
            .set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).ok()?;
        Some(line.trim_end().to_string()).filter(|l| !l.is_empty())
    })
}

/// `ls --json`, as rows.
fn listing(lab: &Lab) -> Vec<Value> {
    let out = lab.nsport_ok(&["ls", "--json"]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Every listed mapping answers from where its host side is reachable: a wildcard or
/// outside address from `out`, 127.0.0.1 from the host itself.
fn every_mapping_reachable(lab: &Lab) {
    for row in listing(lab) {
        let port = row["host_port"].as_u64().unwrap() as u16;
        let ipv6 = row["family"] == "ipv6";
        let (role, addr): (&str, IpAddr) = match row["host_addr"].as_str() {
            Some("127.0.0.1") => ("host", LOCALHOST.into()),
            Some(addr) => ("out", addr.parse().unwrap()),
            None if ipv6 => ("out", v6::HOST_OUT.into()),
            None => ("out", HOST_OUT.into()),
        };
        let answer = match row["proto"].as_str().unwrap() {
            "tcp" => probe_tcp(lab, role, addr, port),
            _ => lab.udp(role, addr, port),
        };
        assert!(answer.is_some(), "{row} is not reachable from {role}");
    }
}

/// How many mapping elements a table holds (its maps' lines with ` : `).
fn mapping_count(table: &str) -> usize {
    table
        .lines()
        .filter(|line| line.contains("comment \"via="))
        .count()
}

/// The table now, normalized as the golden files are.
fn table_now(lab: &Lab) -> String {
    let table = lab.nft("host", "list table inet nsport");
    assert!(
        !table.contains("unknown") && !table.contains("invalid"),
        "{table}"
    );
    without_counter_values(&sort_elements(&hide_inodes(&lab.normalize(&table))))
}

struct Scenario {
    /// The layout the fixture (`nft/v1/NAME.nft` or `nft/v2/NAME.nft`) is written in.
    from: u32,
    name: &'static str,
    dual_stack: bool,
    loopback_vias: &'static [&'static str],
    /// Whether layout 1 turned hairpin mode on for ns1's bridge port.
    hairpin: bool,
    /// The long-lived connection: from `out` to this host address and port, to a server
    /// in `role` at `to`.
    long_lived: (IpAddr, u16, &'static str, SocketAddr),
    /// Servers: (role, address, port, tcp).
    servers: &'static [(&'static str, IpAddr, u16, bool)],
    /// A mapping to add and remove again: its `add` arguments and its `rm` argument.
    add: &'static [&'static str],
    rm: &'static str,
    /// Where the added mapping answers from `out`.
    added_at: (IpAddr, u16),
}

const ANY4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
const ANY6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

fn upgrade(scenario: Scenario) {
    let lab = if scenario.dual_stack {
        Lab::dual_stack(BrNetfilter::On)
    } else {
        Lab::new(BrNetfilter::On)
    };
    let from = scenario.from;
    let v1 = instantiate(
        &lab,
        &fixture(&format!("nft/v{from}/{}.nft", scenario.name)),
    );
    load(&lab, &v1);
    v1_settings(
        &lab,
        scenario.loopback_vias,
        scenario.hairpin,
        scenario.dual_stack,
    );
    let mut servers = Vec::new();
    let mut udp = Vec::new();
    for &(role, addr, port, tcp) in scenario.servers {
        if tcp {
            servers.push(EchoServer::start(
                &lab,
                role,
                SocketAddr::from((addr, port)),
            ));
        } else {
            udp.push(lab.serve_udp(role, addr, port));
        }
    }
    let (host_addr, host_port, _, _) = scenario.long_lived;
    let mut connection = Connection::open(&lab, "out", host_addr, host_port);
    assert!(connection.still_works(), "through the layout-1 table");

    // ls reads the old table: every mapping, marked as pending migration.
    let expected_count = mapping_count(&v1);
    let output = lab.nsport(&["ls"]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(&format!("note: table inet nsport has layout {from}")),
        "{text}"
    );
    assert_eq!(listing(&lab).len(), expected_count, "{text}");
    let doctor = String::from_utf8(lab.nsport(&["doctor"]).stdout).unwrap();
    assert!(
        doctor.contains(&format!("table layout: layout {from}"))
            && doctor.contains("migration pending"),
        "{doctor}"
    );
    // ls changed nothing.
    let old_mark = match from {
        1 => "set ifaces",
        _ => "comment \"nsport-layout=2\"",
    };
    assert!(
        lab.nft("host", "list table inet nsport").contains(old_mark),
        "ls must not migrate"
    );
    every_mapping_reachable(&lab);

    // The first change migrates, in the same batch.
    let output = lab.nsport(scenario.add);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(&format!("rebuilt in layout {LAYOUT}")),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(connection.still_works(), "after the migrating add");
    let table = lab.nft("host", "list table inet nsport");
    assert!(
        table.contains(&format!("comment \"nsport-layout={LAYOUT}\"")) && !table.contains("ifaces"),
        "{table}"
    );
    // Runs of identity ports, one element each in the old table, are one range now: as
    // many mappings as the golden table of this layout holds.
    let golden = fixture(&format!("nft/{}.nft", scenario.name));
    let migrated_count = mapping_count(&golden);
    assert!(migrated_count <= expected_count);
    assert_eq!(listing(&lab).len(), migrated_count + 1);
    every_mapping_reachable(&lab);
    let (addr, port) = scenario.added_at;
    assert!(
        probe_tcp(&lab, "out", addr, port).is_some(),
        "the added mapping"
    );
    let doctor = String::from_utf8(lab.nsport(&["doctor"]).stdout).unwrap();
    assert!(doctor.contains("no migration pending"), "{doctor}");

    lab.nsport_ok(&["rm", scenario.rm]);
    assert!(connection.still_works(), "after rm");
    assert_eq!(listing(&lab).len(), migrated_count);
    every_mapping_reachable(&lab);

    // Layout 2 recorded the families whose forwarding nsport turned on; the migration
    // keeps them closed.
    let expected = match from {
        1 => without_closed_elements(&golden),
        _ => without_counter_values(&golden),
    };
    assert_eq!(
        table_now(&lab),
        expected,
        "{}: the migrated table is not the current golden table",
        scenario.name
    );
    // The settings record stays valid: flush puts back what layout 1 turned on.
    lab.nsport_ok(&["flush"]);
    for via in scenario.loopback_vias {
        assert_eq!(
            lab.read_sysctl("host", &format!("net/ipv4/conf/{via}/route_localnet")),
            "0"
        );
    }
}

const NS1_ADDR: IpAddr = IpAddr::V4(NS1);
const NS3_ADDR: IpAddr = IpAddr::V4(NS3);

#[test]
fn bridge_table_of_layout_1_migrates_on_add() {
    upgrade(Scenario {
        from: 1,
        name: "bridge",
        dual_stack: false,
        loopback_vias: &["br0"],
        hairpin: true,
        long_lived: (
            IpAddr::V4(HOST_OUT),
            3000,
            "ns1",
            SocketAddr::new(ANY4, 3000),
        ),
        servers: &[("ns1", ANY4, 3000, true), ("ns1", NS1_ADDR, 53, false)],
        add: &["add", "--to", "172.18.0.2", "3500:3000"],
        rm: "3500",
        added_at: (IpAddr::V4(HOST_OUT), 3500),
    });
}

#[test]
fn veth_table_of_layout_1_migrates_on_add() {
    upgrade(Scenario {
        from: 1,
        name: "veth",
        dual_stack: false,
        loopback_vias: &["v3"],
        hairpin: false,
        long_lived: (IpAddr::V4(HOST_OUT), 8080, "ns3", SocketAddr::new(ANY4, 80)),
        servers: &[
            ("ns3", ANY4, 80, true),
            ("ns3", ANY4, 443, true),
            ("ns3", NS3_ADDR, 9000, false),
            ("ns3", NS3_ADDR, 9001, false),
            ("ns3", NS3_ADDR, 9002, false),
        ],
        add: &["add", "--to", "10.77.0.2", "8081:80"],
        rm: "8081",
        added_at: (IpAddr::V4(HOST_OUT), 8081),
    });
}

#[test]
fn after_rm_table_of_layout_1_migrates_on_add() {
    upgrade(Scenario {
        from: 1,
        name: "after-rm",
        dual_stack: false,
        loopback_vias: &["br0"],
        hairpin: true,
        long_lived: (
            IpAddr::V4(HOST_OUT),
            3000,
            "ns1",
            SocketAddr::new(ANY4, 3000),
        ),
        servers: &[("ns1", ANY4, 3000, true)],
        add: &["add", "--to", "172.18.0.2", "3500:3000"],
        rm: "3500",
        added_at: (IpAddr::V4(HOST_OUT), 3500),
    });
}

#[test]
fn dual_stack_table_of_layout_1_migrates_on_add() {
    upgrade(Scenario {
        from: 1,
        name: "dual-stack",
        dual_stack: true,
        loopback_vias: &["br0"],
        hairpin: true,
        long_lived: (
            IpAddr::V6(v6::HOST_OUT),
            8443,
            "ns1",
            SocketAddr::new(ANY6, 443),
        ),
        servers: &[
            ("ns1", ANY6, 80, true),
            ("ns1", ANY6, 443, true),
            ("ns1", ANY6, 53, false),
            ("ns3", ANY6, 80, true),
        ],
        add: &["add", "--to", "172.18.0.2", "8081:80"],
        rm: "8081",
        added_at: (IpAddr::V4(HOST_OUT), 8081),
    });
}

/// A CNI plugin of this version meets a layout-1 table holding a mapping that layout 1's
/// plugin made: its DEL is the first change, migrates the table and removes exactly that
/// container's mapping.
#[test]
fn cni_del_migrates_a_layout_1_table() {
    let lab = Lab::new(BrNetfilter::On);
    let mut v1 = instantiate(&lab, &fixture("nft/v1/bridge.nft"));
    v1.push_str(&format!(
        "add element inet nsport any4 {{ tcp . 8081 comment \"via=br0 netns=/run/netns/{} ino={} cni=ctr1/eth0\" : 172.18.0.3 . 80 }}\n\
         add element inet nsport hairpin4 {{ 172.18.0.3 . 172.18.0.3 }}\n\
         add element inet nsport targets4 {{ 172.18.0.3 }}\n",
        lab.ns("ns2"),
        lab.netns_inode("ns2"),
    ));
    load(&lab, &v1);
    v1_settings(&lab, &["br0"], true, false);
    let _ns1 = EchoServer::start(&lab, "ns1", SocketAddr::new(ANY4, 3000));
    let _ns2 = EchoServer::start(&lab, "ns2", SocketAddr::new(ANY4, 80));
    let _dns = lab.serve_udp("ns1", NS1, 53);
    let mut connection = Connection::open(&lab, "out", HOST_OUT.into(), 3000);
    let mut to_container = Connection::open(&lab, "out", HOST_OUT.into(), 8081);
    assert!(connection.still_works() && to_container.still_works());
    let rows = listing(&lab);
    assert_eq!(rows.len(), 5);
    assert!(
        rows.iter()
            .any(|r| r["container"] == "ctr1" && r["container_ifname"] == "eth0")
    );
    every_mapping_reachable(&lab);

    let config = serde_json::json!({"cniVersion": "1.0.0", "name": "labnet", "type": "nsport"});
    let output = lab.cni(
        env!("CARGO_BIN_EXE_nsport"),
        "DEL",
        "ctr1",
        &lab.ns("ns2"),
        &config,
    );
    assert!(
        output.status.success(),
        "{} {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(connection.still_works(), "after the migrating DEL");
    assert_eq!(listing(&lab).len(), 4);
    every_mapping_reachable(&lab);
    assert_eq!(probe_tcp(&lab, "out", HOST_OUT.into(), 8081), None);
    assert_eq!(
        table_now(&lab),
        without_closed_elements(&fixture("nft/bridge.nft")),
    );
}

/// The golden bridge table as a newer nsport would have written it, claiming the next
/// layout.
fn future_table(lab: &Lab) -> String {
    let table = instantiate(lab, &fixture("nft/bridge.nft"));
    let current = format!("nsport-layout={LAYOUT}");
    assert!(table.contains(&format!("comment \"{current}\"")));
    table.replace(&current, &format!("nsport-layout={NEXT}"))
}

/// The layout this nsport writes, and the next one, which it does not know.
const LAYOUT: u32 = nsport::ruleset::LAYOUT;
const NEXT: u32 = LAYOUT + 1;

#[test]
fn a_table_of_a_newer_layout_is_refused_and_listed_marked() {
    let lab = Lab::new(BrNetfilter::On);
    load(&lab, &future_table(&lab));
    let before = lab.ruleset();
    let ns1 = lab.ns("ns1");
    // What is published, as a mappings file (export reads what it can).
    let file = TempFile(std::env::temp_dir().join(format!("{}-mappings.json", lab.ns("x"))));
    std::fs::write(&file.0, lab.nsport_ok(&["export"])).unwrap();
    let file_path = file.0.to_string_lossy().into_owned();
    for args in [
        &["add", "--netns", &ns1, "3500:3000"][..],
        &["rm", "3000"],
        &["rm", "--netns", &ns1],
        &["apply", &file_path],
        &["prune"],
        &["migrate"],
        &["flush"],
        &["add", "--dry-run", "--netns", &ns1, "3500:3000"],
        // A script in this layout could not say what the newer table holds.
        &["export", "--nft"],
    ] {
        let output = lab.nsport(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("layout {NEXT}"))
                && stderr.contains(&format!("layout {LAYOUT}"))
                && stderr.contains("upgrade nsport"),
            "{args:?}: {stderr}"
        );
    }
    // A CNI DEL of a container with no mapping finds nothing to change.
    let config = serde_json::json!({"cniVersion": "1.0.0", "name": "labnet", "type": "nsport"});
    lab.cni(env!("CARGO_BIN_EXE_nsport"), "DEL", "ctr1", &ns1, &config);
    assert_eq!(lab.ruleset(), before, "nothing was changed");

    let output = lab.nsport(&["ls"]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(&format!(
            "note: table inet nsport has layout {NEXT}, newer than this nsport knows (layout {LAYOUT})"
        )),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("upgrade nsport"));
    assert_eq!(listing(&lab).len(), 4);
    let doctor = lab.nsport(&["doctor"]);
    let doctor = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        doctor.contains(&format!(
            "table layout: layout {NEXT}, newer than this nsport knows ({LAYOUT})"
        )),
        "{doctor}"
    );
    assert_eq!(lab.ruleset(), before, "ls and doctor repair nothing");
}

/// `nsport migrate` alone: the table is rebuilt, nothing else changes, and running it again
/// changes nothing.
#[test]
fn migrate_rebuilds_and_is_idempotent() {
    let lab = Lab::new(BrNetfilter::On);
    load(&lab, &instantiate(&lab, &fixture("nft/v1/bridge.nft")));
    v1_settings(&lab, &["br0"], true, false);
    let dry = lab.nsport_ok(&["migrate", "--dry-run"]);
    assert!(
        dry.contains(&format!("from layout 1 in layout {LAYOUT}")),
        "{dry}"
    );
    assert!(
        lab.nft("host", "list table inet nsport")
            .contains("set ifaces")
    );
    lab.nsport_ok(&["migrate"]);
    let migrated = table_now(&lab);
    assert_eq!(
        migrated,
        without_closed_elements(&fixture("nft/bridge.nft"))
    );
    let generation = lab.ruleset();
    let output = lab.nsport(&["migrate"]);
    assert!(output.status.success());
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(lab.ruleset(), generation);
}

/// A table of layout 2 (before interface-bound maps, kept in `nft/v2/`) is rebuilt by the
/// first change, which may be one that needs the new maps: every mapping keeps answering.
#[test]
fn a_layout_2_table_migrates_on_an_add_on_an_interface() {
    let lab = Lab::new(BrNetfilter::On);
    load(&lab, &instantiate(&lab, &fixture("nft/v2/bridge.nft")));
    let _server = lab.serve_tcp("ns1", ANY4, 3000);
    let output = lab.nsport(&["add", "--netns", &lab.ns("ns1"), "--on", "vo", "3600:3000"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("rebuilt in layout {LAYOUT}")),
        "{stderr}"
    );
    let table = lab.nft("host", "list table inet nsport");
    assert!(
        table.contains(&format!("comment \"nsport-layout={LAYOUT}\""))
            && table.contains(r#""vo" . tcp . 3600"#),
        "{table}"
    );
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), some(OUT));
    assert_eq!(lab.tcp("out", HOST_OUT, 3600), some(OUT));
    assert_eq!(lab.tcp("ns3", HOST_OUT, 3600), None);
    assert_eq!(listing(&lab).len(), 5);
}

#[test]
fn bridge_table_of_layout_2_migrates_on_add() {
    upgrade(Scenario {
        from: 2,
        name: "bridge",
        dual_stack: false,
        loopback_vias: &["br0"],
        hairpin: true,
        long_lived: (
            IpAddr::V4(HOST_OUT),
            3000,
            "ns1",
            SocketAddr::new(ANY4, 3000),
        ),
        servers: &[
            ("ns1", ANY4, 3000, true),
            ("ns1", NS1_ADDR, 53, false),
            ("ns1", ANY4, 3500, true),
            ("ns1", ANY4, 3505, true),
        ],
        // The first change after the upgrade publishes a range, which layout 2 could not
        // hold as one element.
        add: &["add", "--to", "172.18.0.2", "3500-3509:3500-3509"],
        rm: "3500-3509",
        added_at: (IpAddr::V4(HOST_OUT), 3505),
    });
}

#[test]
fn dual_stack_table_of_layout_2_migrates_on_add() {
    upgrade(Scenario {
        from: 2,
        name: "dual-stack",
        dual_stack: true,
        loopback_vias: &["br0"],
        hairpin: true,
        long_lived: (
            IpAddr::V6(v6::HOST_OUT),
            8443,
            "ns1",
            SocketAddr::new(ANY6, 443),
        ),
        servers: &[
            ("ns1", ANY6, 80, true),
            ("ns1", ANY6, 443, true),
            ("ns1", ANY6, 53, false),
            ("ns3", ANY6, 80, true),
        ],
        add: &["add", "--to", "172.18.0.2", "8081:80"],
        rm: "8081",
        added_at: (IpAddr::V4(HOST_OUT), 8081),
    });
}

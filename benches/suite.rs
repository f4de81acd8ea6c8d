//! nsport's benchmark suite: `sudo scripts/bench`.
//!
//! Everything runs in network namespaces this program creates (the test lab, see
//! `tests/lab/mod.rs`), and every command is started from a thread inside the lab's host
//! namespace, so that no `ip netns exec` is timed. Each comparison alternates its
//! contenders (A B A B …) in one run and compares medians: these machines are shared and
//! noisy, and only ratios measured side by side mean anything. The table is printed and
//! written into BENCHMARKS.md with the machine it ran on.

#[path = "suite/allow_from.rs"]
mod allow_from;
#[path = "../tests/lab/mod.rs"]
mod lab;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab::{BrNetfilter, HOST_OUT, Lab};

const NSPORT: &str = env!("CARGO_BIN_EXE_nsport");
const ROUNDS: usize = 15;

/// One line of the results table.
struct Row {
    scenario: String,
    nsport: String,
    baseline: String,
    ratio: f64,
    target: String,
    met: bool,
}

/// A row comparing nsport with a baseline that must be at least `times` slower.
fn faster(scenario: String, nsport: Duration, baseline: Duration, times: f64) -> Row {
    let r = ratio(baseline, nsport);
    Row {
        scenario,
        nsport: ms(nsport),
        baseline: ms(baseline),
        ratio: r,
        target: format!("≥ {times}x faster"),
        met: r >= times,
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// A command run from the current thread's namespace; panics on failure.
fn run(lab: &Lab, program: &str, args: &[&str]) -> Duration {
    run_with_input(lab, program, args, None)
}

fn run_with_input(lab: &Lab, program: &str, args: &[&str], input: Option<&str>) -> Duration {
    let mut command = Command::new(program);
    command
        .args(args)
        .env("NSPORT_STATE_DIR", lab.state_dir())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = command.spawn().unwrap_or_else(|e| panic!("{program}: {e}"));
    if let Some(input) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let took = start.elapsed();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    took
}

/// `N` Docker-style DNAT rules in chain DOCKER of table ip nat, loaded in one restore.
fn docker_rules(ports: impl Iterator<Item = u16>, target: &str) -> String {
    let mut rules = String::from("*nat\n:DOCKER - [0:0]\n");
    for port in ports {
        let _ = writeln!(
            rules,
            "-A DOCKER ! -i br0 -p tcp -m tcp --dport {port} -j DNAT --to-destination {target}:{port}"
        );
    }
    rules.push_str("COMMIT\n");
    rules
}

fn docker_chain(lab: &Lab) {
    run(lab, "iptables", &["-t", "nat", "-N", "DOCKER"]);
    run(
        lab,
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            "DOCKER",
        ],
    );
}

fn docker_add(port: u16) -> Vec<String> {
    format!(
        "-t nat -A DOCKER ! -i br0 -p tcp -m tcp --dport {port} -j DNAT --to-destination 10.77.0.2:{port}"
    )
    .split(' ')
    .map(String::from)
    .collect()
}

/// Scenario 1: one more port when N are published, against the floor, `nft add element`
/// and, at N = 10,000, `iptables-nft -A` with N Docker-style rules.
fn publish_one(rows: &mut Vec<Row>) {
    let lab = Lab::new(BrNetfilter::Off);
    let mut at_zero = Duration::ZERO;
    lab.run_in("host", || docker_chain(&lab));
    for n in [0u32, 1000, 10_000, 50_000] {
        let (floor, add, nft, iptables) = lab.run_in("host", || {
            run(&lab, NSPORT, &["flush"]);
            if n > 0 {
                let range = format!("10000-{}", 10000 + n - 1);
                run(&lab, NSPORT, &["add", "--to", "10.77.0.2", &range]);
            } else {
                // The table, with nothing in it.
                run(&lab, NSPORT, &["add", "--to", "10.77.0.2", "9"]);
                run(&lab, NSPORT, &["rm", "9"]);
            }
            if n == 10_000 {
                let rules = docker_rules(10000..20000, "10.77.0.2");
                run_with_input(&lab, "iptables-restore", &["--noflush"], Some(&rules));
            }
            let mut samples: [Vec<Duration>; 4] = Default::default();
            for _ in 0..ROUNDS {
                samples[0].push(run(&lab, NSPORT, &["--version"]));
                samples[1].push(run(&lab, NSPORT, &["add", "--to", "10.77.0.2", "5"]));
                // Reset through nsport, which keeps the helpers' counts right (rm reads
                // only what it removes).
                run(&lab, NSPORT, &["rm", "5"]);
                samples[2].push(run(
                    &lab,
                    "nft",
                    &["add element inet nsport any4 { tcp . 6 : 10.77.0.2 . 6 }"],
                ));
                run(
                    &lab,
                    "nft",
                    &["delete element inet nsport any4 { tcp . 6 }"],
                );
                if n == 10_000 {
                    let add = docker_add(7);
                    let add: Vec<&str> = add.iter().map(String::as_str).collect();
                    samples[3].push(run(&lab, "iptables", &add));
                    let mut delete = add.clone();
                    delete[2] = "-D";
                    run(&lab, "iptables", &delete);
                }
            }
            if n == 10_000 {
                run(&lab, "iptables", &["-t", "nat", "-F", "DOCKER"]);
            }
            let [floor, add, nft, iptables] = samples;
            (
                median(floor),
                median(add),
                median(nft),
                (!iptables.is_empty()).then(|| median(iptables)),
            )
        });
        if n == 0 {
            at_zero = add;
        }
        let r = ratio(add, floor);
        rows.push(Row {
            scenario: format!("publish 1 port, N={n}: vs the floor (`nsport --version`)"),
            nsport: ms(add),
            baseline: ms(floor),
            ratio: r,
            target: "≤ 1.3x the floor".into(),
            met: r <= 1.3,
        });
        rows.push(faster(
            format!("publish 1 port, N={n}: vs `nft add element`"),
            add,
            nft,
            1.5,
        ));
        if let Some(iptables) = iptables {
            rows.push(faster(
                format!("publish 1 port, N={n}: vs `iptables-nft -A` with N Docker rules"),
                add,
                iptables,
                4.0,
            ));
        }
        if n == 50_000 {
            let r = ratio(add, at_zero);
            rows.push(Row {
                scenario: "publish 1 port: N=50,000 against N=0".into(),
                nsport: ms(add),
                baseline: ms(at_zero),
                ratio: r,
                target: "≤ 1.3x".into(),
                met: r <= 1.3,
            });
        }
    }
}

/// Scenario 2: a range in one command, against `nft -f` of the same elements and one
/// `iptables` call per port (Docker's way).
fn publish_range(rows: &mut Vec<Row>) {
    let lab = Lab::new(BrNetfilter::Off);
    lab.run_in("host", || {
        // A table of the same shape for nft to load into, and nsport's own, empty.
        let script = nsport_script().replace("table inet nsport", "table inet nftbench");
        run_with_input(&lab, "nft", &["-f", "-"], Some(&script));
        docker_chain(&lab);
        run(&lab, NSPORT, &["add", "--to", "10.77.0.2", "9"]);
        run(&lab, NSPORT, &["rm", "9"]);
    });
    for n in [1000u16, 10_000] {
        let range = format!("30000-{}", 30000 + n - 1);
        let elements: Vec<String> = (30000..30000 + n)
            .map(|p| format!("tcp . {p} : 10.77.0.2 . {p}"))
            .collect();
        let nft_file = format!(
            "add element inet nftbench any4 {{ {} }}\n",
            elements.join(", ")
        );
        let (add, nft) = lab.run_in("host", || {
            let mut samples: [Vec<Duration>; 2] = Default::default();
            for _ in 0..7 {
                samples[0].push(run(&lab, NSPORT, &["add", "--to", "10.77.0.2", &range]));
                run(&lab, NSPORT, &["rm", &range]);
                samples[1].push(run_with_input(&lab, "nft", &["-f", "-"], Some(&nft_file)));
                run(&lab, "nft", &["flush map inet nftbench any4"]);
            }
            let [add, nft] = samples;
            (median(add), median(nft))
        });
        rows.push(faster(
            format!("publish a range of {n} ports: vs `nft -f` of the same elements"),
            add,
            nft,
            2.0,
        ));
        if n == 1000 {
            // One iptables call per port, as Docker does: three rounds, alternating.
            let per_port = lab.run_in("host", || {
                let mut samples = Vec::new();
                for _ in 0..3 {
                    let start = Instant::now();
                    for port in 30000..30000 + n {
                        let add = docker_add(port);
                        let add: Vec<&str> = add.iter().map(String::as_str).collect();
                        run(&lab, "iptables", &add);
                    }
                    samples.push(start.elapsed());
                    run(&lab, "iptables", &["-t", "nat", "-F", "DOCKER"]);
                }
                median(samples)
            });
            rows.push(faster(
                "publish a range of 1000 ports: vs one `iptables-nft -A` per port".into(),
                add,
                per_port,
                100.0,
            ));
        }
    }
}

/// The empty nsport table, as nft syntax, read from nsport itself.
fn nsport_script() -> String {
    nsport::ruleset::table_script()
        .lines()
        .skip(3)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A TCP server in ns1 of `lab` on `port` that answers each connection with one byte.
fn byte_server(lab: &Lab, port: u16) {
    let listener = lab.run_in("ns1", || TcpListener::bind(("0.0.0.0", port)).unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(b"x");
        }
    });
}

/// p50 of `count` new connections (connect, read one byte, close) from `out`.
fn connection_p50(lab: &Lab, addr: Ipv4Addr, port: u16, count: usize) -> Duration {
    lab.run_in("out", || {
        let target = SocketAddr::from((addr, port));
        let mut samples = Vec::with_capacity(count);
        for _ in 0..count {
            let start = Instant::now();
            let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap();
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).unwrap();
            drop(stream);
            samples.push(start.elapsed());
        }
        median(samples)
    })
}

/// Scenario 3: the latency of a new connection with 10,000 ports published against 1,
/// for nsport's maps and for one iptables rule per port.
fn data_path(rows: &mut Vec<Row>) {
    let port = 29999;
    let labs: Vec<(&str, Lab)> = ["nsport 1", "nsport 10k", "iptables 1", "iptables 10k"]
        .into_iter()
        .map(|name| (name, Lab::new(BrNetfilter::Off)))
        .collect();
    for (name, lab) in &labs {
        byte_server(lab, port);
        lab.run_in("host", || match *name {
            "nsport 1" => {
                run(lab, NSPORT, &["add", "--to", "172.18.0.2", "29999"]);
            }
            "nsport 10k" => {
                run(lab, NSPORT, &["add", "--to", "172.18.0.2", "20000-29999"]);
            }
            _ => {
                lab.write_sysctl("host", "net/ipv4/ip_forward", "1");
                docker_chain(lab);
                let first = if *name == "iptables 1" { 29999 } else { 20000 };
                let rules = docker_rules(first..30000, "172.18.0.2");
                run_with_input(lab, "iptables-restore", &["--noflush"], Some(&rules));
            }
        });
        connection_p50(lab, HOST_OUT, port, 50);
    }
    // Short batches, interleaved many times: the labs share the machine with whatever
    // else runs, and a slow moment should hit every contender alike.
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); labs.len()];
    for _ in 0..31 {
        for (i, (_, lab)) in labs.iter().enumerate() {
            samples[i].push(connection_p50(lab, HOST_OUT, port, 40));
        }
    }
    let p50: Vec<Duration> = samples.into_iter().map(median).collect();
    let r = ratio(p50[1], p50[0]);
    rows.push(Row {
        scenario: "new connection p50, 10,000 published vs 1: nsport maps".into(),
        nsport: us(p50[1]),
        baseline: us(p50[0]),
        ratio: r,
        target: "≤ 1.15x".into(),
        met: r <= 1.15,
    });
    let r = ratio(p50[3], p50[2]);
    rows.push(Row {
        scenario: "new connection p50, 10,000 published vs 1: one iptables-nft rule per port"
            .into(),
        nsport: us(p50[3]),
        baseline: us(p50[2]),
        ratio: r,
        target: "(shown for comparison)".into(),
        met: true,
    });
}

/// Scenario 4: `nsport::publish` from Rust at N = 0 and 50,000.
fn library(rows: &mut Vec<Row>) {
    let lab = Lab::new(BrNetfilter::Off);
    let target = nsport::Target::Addr("10.77.0.2".parse().unwrap());
    let options = nsport::PublishOptions::default();
    let mut medians = Vec::new();
    for n in [0u32, 50_000] {
        let took = lab.run_in("host", || {
            if n > 0 {
                run(&lab, NSPORT, &["add", "--to", "10.77.0.2", "10000-59999"]);
            }
            let spec = ["7".parse().unwrap()];
            let mut samples = Vec::new();
            for _ in 0..30 {
                let start = Instant::now();
                nsport::publish(&target, &options, &spec).unwrap();
                samples.push(start.elapsed());
                nsport::unpublish(&["7".parse().unwrap()], false).unwrap();
            }
            run(&lab, NSPORT, &["flush"]);
            median(samples)
        });
        medians.push(took);
    }
    for (n, took) in [0, 50_000].iter().zip(&medians) {
        rows.push(Row {
            scenario: format!("library `publish` of one mapping, N={n}"),
            nsport: us(*took),
            baseline: "1 ms".into(),
            ratio: took.as_secs_f64() / 1e-3,
            target: "< 1 ms".into(),
            met: *took < Duration::from_millis(1),
        });
    }
    let r = ratio(medians[1], medians[0]);
    rows.push(Row {
        scenario: "library `publish`: N=50,000 against N=0".into(),
        nsport: us(medians[1]),
        baseline: us(medians[0]),
        ratio: r,
        target: "flat (≤ 1.3x)".into(),
        met: r <= 1.3,
    });
}

/// Scenario 4b: removing one mapping and applying many, at 50,000, against publishing:
/// `rm` of one port against `add` of one (each reads only what it changes), and `apply` of
/// a saved listing of 50,000 onto an empty table against `add` of the same range.
fn scale(rows: &mut Vec<Row>) {
    let lab = Lab::new(BrNetfilter::Off);
    // add and rm alternating at N = 0 and 50,000, then `nft delete element`. Deleting
    // anything makes the kernel wait out an RCU grace period when the deleting netlink
    // socket closes, so `nft delete element` is the floor a removal is measured against.
    let mut medians = Vec::new();
    for n in [0u32, 50_000] {
        medians.push(lab.run_in("host", || {
            run(&lab, NSPORT, &["flush"]);
            run(&lab, NSPORT, &["add", "--to", "10.77.0.2", "9"]);
            if n > 0 {
                let range = format!("10000-{}", 10000 + n - 1);
                run(&lab, NSPORT, &["add", "--to", "10.77.0.2", &range]);
            }
            let mut samples: [Vec<Duration>; 3] = Default::default();
            // nsport alone first: another writer in between (nft below) would make the
            // removal count afresh from every mapping, which is what it must do then, but
            // not what this row measures.
            for _ in 0..ROUNDS {
                samples[0].push(run(&lab, NSPORT, &["add", "--to", "10.77.0.2", "5"]));
                samples[1].push(run(&lab, NSPORT, &["rm", "5"]));
            }
            for _ in 0..ROUNDS {
                run(
                    &lab,
                    "nft",
                    &["add element inet nsport any4 { tcp . 6 : 10.77.0.2 . 6 }"],
                );
                samples[2].push(run(
                    &lab,
                    "nft",
                    &["delete element inet nsport any4 { tcp . 6 }"],
                ));
            }
            let [add, rm, nft_delete] = samples;
            (median(add), median(rm), median(nft_delete))
        }));
    }
    let (add, rm, nft_delete) = medians[1];
    let r = ratio(rm, add);
    rows.push(Row {
        scenario: "rm of 1 port at N=50,000 against add of 1 port".into(),
        nsport: ms(rm),
        baseline: ms(add),
        ratio: r,
        target: "≤ 1.3x".into(),
        met: r <= 1.3,
    });
    let r = ratio(rm, nft_delete);
    rows.push(Row {
        scenario: "rm of 1 port at N=50,000 against `nft delete element` (the kernel's floor for a removal)".into(),
        nsport: ms(rm),
        baseline: ms(nft_delete),
        ratio: r,
        target: "≤ 1.3x".into(),
        met: r <= 1.3,
    });
    let r = ratio(rm, medians[0].1);
    rows.push(Row {
        scenario: "rm of 1 port: N=50,000 against N=0".into(),
        nsport: ms(rm),
        baseline: ms(medians[0].1),
        ratio: r,
        target: "flat (≤ 1.3x)".into(),
        met: r <= 1.3,
    });
    let (range, apply) = lab.run_in("host", || {
        let saved = lab.state_dir().join("bench-50000.json");
        let output = Command::new(NSPORT)
            .args(["ls", "--json"])
            .env("NSPORT_STATE_DIR", lab.state_dir())
            .output()
            .unwrap();
        std::fs::write(&saved, &output.stdout).unwrap();
        let saved = saved.display().to_string();
        let mut samples: [Vec<Duration>; 2] = Default::default();
        for _ in 0..5 {
            run(&lab, NSPORT, &["flush"]);
            samples[0].push(run(
                &lab,
                NSPORT,
                &["add", "--to", "10.77.0.2", "10000-59999"],
            ));
            run(&lab, NSPORT, &["flush"]);
            samples[1].push(run(&lab, NSPORT, &["apply", &saved]));
        }
        run(&lab, NSPORT, &["flush"]);
        let [range, apply] = samples;
        (median(range), median(apply))
    });
    let r = ratio(apply, range);
    rows.push(Row {
        scenario: "apply of 50,000 saved mappings onto an empty table against add of the range"
            .into(),
        nsport: ms(apply),
        baseline: ms(range),
        ratio: r,
        target: "≤ 2x".into(),
        met: r <= 2.0,
    });
}

/// Scenario 5: `nsport ls --json` against `nft -j list table inet nsport`.
fn listing(rows: &mut Vec<Row>) {
    let lab = Lab::new(BrNetfilter::Off);
    for n in [10_000u32, 50_000] {
        let (ls, nft) = lab.run_in("host", || {
            run(&lab, NSPORT, &["flush"]);
            let range = format!("10000-{}", 10000 + n - 1);
            run(&lab, NSPORT, &["add", "--to", "10.77.0.2", &range]);
            let mut samples: [Vec<Duration>; 2] = Default::default();
            for _ in 0..5 {
                samples[0].push(run(&lab, NSPORT, &["ls", "--json"]));
                samples[1].push(run(&lab, "nft", &["-j", "list", "table", "inet", "nsport"]));
            }
            let [ls, nft] = samples;
            (median(ls), median(nft))
        });
        let r = ratio(nft, ls);
        rows.push(Row {
            scenario: format!("`ls --json` of {n} mappings: vs `nft -j list table`"),
            nsport: ms(ls),
            baseline: ms(nft),
            ratio: r,
            target: "< 1 s and ≥ 2x faster".into(),
            met: ls < Duration::from_secs(1) && r >= 2.0,
        });
    }
}

/// Scenario 6: peak RSS of one `nsport add`, and nothing left running.
fn footprint(rows: &mut Vec<Row>) {
    let lab = Lab::new(BrNetfilter::Off);
    let kib = lab.run_in("host", || {
        let output = Command::new("/usr/bin/time")
            .args(["-f", "%M", NSPORT, "add", "--to", "10.77.0.2", "8"])
            .env("NSPORT_STATE_DIR", lab.state_dir())
            .output()
            .unwrap();
        assert!(output.status.success());
        let text = String::from_utf8_lossy(&output.stderr);
        text.lines().last().unwrap().trim().parse::<u64>().unwrap()
    });
    let left = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == "nsport")
        })
        .count();
    rows.push(Row {
        scenario: "peak RSS of one `nsport add`".into(),
        nsport: format!("{:.1} MB", kib as f64 / 1024.0),
        baseline: "10 MB".into(),
        ratio: kib as f64 / 10240.0,
        target: "< 10 MB".into(),
        met: kib < 10240,
    });
    rows.push(Row {
        scenario: "nsport processes left running afterwards".into(),
        nsport: left.to_string(),
        baseline: "0".into(),
        ratio: left as f64,
        target: "0".into(),
        met: left == 0,
    });
}

/// Scenario 7: bulk TCP through the published port against straight to the namespace.
fn throughput(rows: &mut Vec<Row>) {
    const BYTES: usize = 256 << 20;
    let lab = Lab::new(BrNetfilter::Off);
    let listener = lab.run_in("ns1", || TcpListener::bind(("0.0.0.0", 9000)).unwrap());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        for mut stream in listener.incoming().flatten() {
            while stream.read(&mut buf).is_ok_and(|n| n > 0) {}
            let _ = stream.write_all(b"done");
        }
    });
    // The direct path is a host routing to its namespace on purpose: its forwarding is on
    // before nsport (which then closes nothing), and the target allows direct access.
    lab.write_sysctl("host", "net/ipv4/ip_forward", "1");
    lab.run_in("host", || {
        run(
            &lab,
            NSPORT,
            &["add", "--allow-direct", "--to", "172.18.0.2", "9000"],
        );
    });
    lab.ip("out", "route add 172.18.0.0/24 via 192.0.2.1");
    let send = |addr: Ipv4Addr| {
        lab.run_in("out", || {
            let chunk = vec![7u8; 1 << 20];
            let start = Instant::now();
            let mut stream = TcpStream::connect((addr, 9000)).unwrap();
            for _ in 0..BYTES / chunk.len() {
                stream.write_all(&chunk).unwrap();
            }
            stream.shutdown(std::net::Shutdown::Write).unwrap();
            let mut done = [0u8; 4];
            stream.read_exact(&mut done).unwrap();
            start.elapsed()
        })
    };
    let mut samples: [Vec<Duration>; 2] = Default::default();
    for _ in 0..7 {
        samples[0].push(send(HOST_OUT));
        samples[1].push(send(Ipv4Addr::new(172, 18, 0, 2)));
    }
    let [published, direct] = samples;
    let (published, direct) = (median(published), median(direct));
    let gbit = |d: Duration| (BYTES as f64 * 8.0) / d.as_secs_f64() / 1e9;
    let r = gbit(published) / gbit(direct);
    rows.push(Row {
        scenario: "bulk TCP through the published port vs straight to the namespace".into(),
        nsport: format!("{:.2} Gbit/s", gbit(published)),
        baseline: format!("{:.2} Gbit/s", gbit(direct)),
        ratio: r,
        target: "≥ 0.9x".into(),
        met: r >= 0.9,
    });
}

/// A scenario adds its rows to the table.
type Scenario = fn(&mut Vec<Row>);

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|model| model.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let version = |program: &str| {
        Command::new(program)
            .arg("--version")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default()
    };
    format!(
        "{cpu}, {cores} cores, Linux {}; {}; {}",
        kernel.trim(),
        version("nft"),
        version("iptables")
    )
}

fn main() {
    // Library calls in this process keep their record of settings in the lab's folder;
    // set before any thread starts.
    let state = std::env::temp_dir().join(format!("nsport-bench-{}", std::process::id()));
    // SAFETY: no other thread exists yet.
    unsafe { std::env::set_var("NSPORT_STATE_DIR", &state) };
    let started = Instant::now();
    let mut rows = Vec::new();
    let scenarios: [(&str, Scenario); 9] = [
        ("publish one port", publish_one),
        ("publish a range", publish_range),
        ("data path", data_path),
        ("library", library),
        ("scale", scale),
        ("listing", listing),
        ("footprint", footprint),
        ("throughput", throughput),
        ("allow-from", allow_from::allow_from),
    ];
    // NSPORT_BENCH=NAME runs the scenarios whose name contains NAME, and leaves
    // BENCHMARKS.md alone: a partial table is not the suite's result.
    let only = std::env::var("NSPORT_BENCH").ok();
    for (name, scenario) in scenarios {
        if only.as_deref().is_some_and(|only| !name.contains(only)) {
            continue;
        }
        eprintln!("bench: {name}…");
        scenario(&mut rows);
    }
    let _ = std::fs::remove_dir_all(&state);
    let mut table = String::from(
        "| scenario | nsport | baseline | ratio | target | met |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for row in &rows {
        let _ = writeln!(
            table,
            "| {} | {} | {} | {:.2} | {} | {} |",
            row.scenario,
            row.nsport,
            row.baseline,
            row.ratio,
            row.target,
            if row.met { "yes" } else { "**no**" }
        );
    }
    let met = rows.iter().filter(|r| r.met).count();
    let summary = format!(
        "{met} of {} targets met; the suite took {:.0} s.",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    println!("{table}\n{summary}");
    if only.is_some() {
        return;
    }
    let results = format!(
        "Machine: {}\n\nRun on {} (UTC date of the run).\n\n{table}\n{summary}\n",
        machine(),
        String::from_utf8_lossy(
            &Command::new("date")
                .arg("-u")
                .arg("+%Y-%m-%d %H:%M")
                .output()
                .unwrap()
                .stdout
        )
        .trim()
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    let (head, tail) = match (doc.find("<!-- results -->"), doc.find("<!-- /results -->")) {
        (Some(start), Some(end)) => (doc[..start].to_string(), doc[end..].to_string()),
        _ => (doc, "<!-- /results -->\n".to_string()),
    };
    std::fs::write(&path, format!("{head}<!-- results -->\n{results}{tail}")).unwrap();
}

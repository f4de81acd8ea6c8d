//! Publishing a range in one command, and ranges as interval elements.

use std::time::{Duration, Instant};

use crate::commands::{NSPORT, docker_add, docker_chain, nsport_script, run, run_with_input};
use crate::datapath::{byte_server, connection_p50};
use crate::lab::{BrNetfilter, HOST_OUT, Lab};
use crate::measure::{Row, faster, median, ms, ratio, us};

/// The comment nsport gives the element of a port published `--to 10.77.0.2`.
/// Run from the lab's host namespace.
fn element_comment() -> String {
    let output = std::process::Command::new("nft")
        .args(["list", "map", "inet", "nsport", "any4"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    text.split("comment \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("nsport's element has a comment")
        .to_string()
}

/// Scenario 2: a range in one command, against `nft -f` of the same elements, of the
/// elements a user would write, and one `iptables` call per port (Docker's way).
pub fn publish_range(rows: &mut Vec<Row>) {
    let lab = Lab::new(BrNetfilter::Off);
    // A table of the same shape for nft to load into and a map as a user would write it
    // (no counters, no comments), in the lab's `out` namespace: nft writing into nsport's
    // would make every timed publish the first after another tool's change (see
    // `publish::publish_one`).
    lab.run_in("out", || {
        let script = nsport_script().replace("table inet nsport", "table inet nftbench");
        run_with_input(&lab, "nft", &["-f", "-"], Some(&script));
        let plain = "table inet plain { map any4 { type inet_proto . inet_service : ipv4_addr . inet_service; }\n}";
        run_with_input(&lab, "nft", &["-f", "-"], Some(plain));
    });
    let comment = lab.run_in("host", || {
        // nsport's own table, empty.
        docker_chain(&lab);
        run(&lab, NSPORT, &["add", "--to", "10.77.0.2", "9"]);
        let comment = element_comment();
        run(&lab, NSPORT, &["rm", "9"]);
        comment
    });
    for n in [1000u16, 10_000] {
        let range = format!("30000-{}", 30000 + n - 1);
        let file = |table: &str, element: &dyn Fn(u16) -> String| {
            let elements: Vec<String> = (30000..30000 + n).map(element).collect();
            format!(
                "add element inet {table} any4 {{ {} }}\n",
                elements.join(", ")
            )
        };
        // What nsport writes, element for element (a counter and its comment on each).
        let equal = file("nftbench", &|p| {
            format!("tcp . {p} counter comment \"{comment}\" : 10.77.0.2 . {p}")
        });
        let plain = file("plain", &|p| format!("tcp . {p} : 10.77.0.2 . {p}"));
        let (add, nft, nft_plain) = lab.run_in("host", || {
            let mut samples: [Vec<Duration>; 3] = Default::default();
            for _ in 0..7 {
                samples[0].push(run(&lab, NSPORT, &["add", "--to", "10.77.0.2", &range]));
                run(&lab, NSPORT, &["rm", &range]);
                lab.run_in("out", || {
                    samples[1].push(run_with_input(&lab, "nft", &["-f", "-"], Some(&equal)));
                    run(&lab, "nft", &["flush map inet nftbench any4"]);
                    samples[2].push(run_with_input(&lab, "nft", &["-f", "-"], Some(&plain)));
                    run(&lab, "nft", &["flush map inet plain any4"]);
                });
            }
            let [add, nft, nft_plain] = samples;
            (median(add), median(nft), median(nft_plain))
        });
        rows.push(faster(
            format!("publish a range of {n} ports: vs `nft -f` of the same elements (counters, comments)"),
            add,
            nft,
            2.0,
        ));
        // Issue 12: an identity range of 10,000 is one interval element, 20x faster than
        // the elements a user would write one per port.
        rows.push(faster(
            format!("publish a range of {n} ports: vs plain `nft -f` (no counters, no comments)"),
            add,
            nft_plain,
            if n == 10_000 { 20.0 } else { 2.0 },
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

/// The plain map a user would write for the same ports: no comments, no counters.
const PLAIN_MAP: &str = "table inet plain {\n\tmap ports {\n\t\ttype inet_proto . inet_service : ipv4_addr . inet_service\n\t}\n}\n";

/// Scenario "ranges as intervals": an identity range is one interval element (layout 3).
/// Against plain `nft -f` of the same 10,000 elements as a user would write them, against
/// publishing one port, a shifted range (one element per port) against the same `nft -f`,
/// and the data path with 10,000 single ports and 100 ranges published against one port.
pub fn ranges_as_intervals(rows: &mut Vec<Row>) {
    let lab = Lab::new(BrNetfilter::Off);
    let n = 10_000u16;
    let identity = format!("30000-{}", 30000 + n - 1);
    let shifted = format!("30000-{}:40000-{}", 30000 + n - 1, 40000 + n - 1);
    let elements: Vec<String> = (30000..30000 + n)
        .map(|p| format!("tcp . {p} : 10.77.0.2 . {p}"))
        .collect();
    let plain = format!(
        "add element inet plain ports {{ {} }}\n",
        elements.join(", ")
    );
    // nft in the `out` namespace, as in `publish_range`.
    lab.run_in("out", || {
        run_with_input(&lab, "nft", &["-f", "-"], Some(PLAIN_MAP));
    });
    let (range, one, shift, nft) = lab.run_in("host", || {
        // The table exists before the first timed command, as it does on a used host.
        run(&lab, NSPORT, &["add", "--to", "10.77.0.2", "9"]);
        run(&lab, NSPORT, &["rm", "9"]);
        let mut samples: [Vec<Duration>; 4] = Default::default();
        for _ in 0..15 {
            samples[0].push(run(&lab, NSPORT, &["add", "--to", "10.77.0.2", &identity]));
            run(&lab, NSPORT, &["rm", &identity]);
            samples[1].push(run(&lab, NSPORT, &["add", "--to", "10.77.0.2", "9"]));
            run(&lab, NSPORT, &["rm", "9"]);
            samples[2].push(run(&lab, NSPORT, &["add", "--to", "10.77.0.2", &shifted]));
            run(&lab, NSPORT, &["rm", &identity]);
            lab.run_in("out", || {
                samples[3].push(run_with_input(&lab, "nft", &["-f", "-"], Some(&plain)));
                run(&lab, "nft", &["flush map inet plain ports"]);
            });
        }
        let [range, one, shift, nft] = samples;
        (median(range), median(one), median(shift), median(nft))
    });
    rows.push(faster(
        format!("identity range of {n} ports (one interval element): vs plain `nft -f` of the same {n} elements"),
        range,
        nft,
        20.0,
    ));
    let r = ratio(range, one);
    rows.push(Row {
        scenario: format!("identity range of {n} ports: vs publishing one port"),
        nsport: ms(range),
        baseline: ms(one),
        ratio: r,
        target: "≤ 1.5x".into(),
        met: r <= 1.5,
    });
    rows.push(faster(
        format!(
            "shifted range of {n} ports (one element per port): vs plain `nft -f` of {n} elements"
        ),
        shift,
        nft,
        2.0,
    ));
    data_path_with_ranges(rows);
}

/// New connections through a port inside the last of 100 ranges, with 10,000 single ports
/// (shifted, so each is an element of the exact map) published too, against one port.
fn data_path_with_ranges(rows: &mut Vec<Row>) {
    let port = 41985;
    let loaded = Lab::new(BrNetfilter::Off);
    let single = Lab::new(BrNetfilter::Off);
    for lab in [&loaded, &single] {
        byte_server(lab, port);
    }
    loaded.run_in("host", || {
        let mut args = vec![
            "add".to_string(),
            "--to".into(),
            "172.18.0.2".into(),
            "10000-19999:20000-29999".into(),
        ];
        args.extend((0..100u16).map(|i| {
            let start = 40000 + i * 20;
            format!("{start}-{}", start + 9)
        }));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&loaded, NSPORT, &args);
    });
    single.run_in("host", || {
        run(&single, NSPORT, &["add", "--to", "172.18.0.2", "41985"]);
    });
    for lab in [&loaded, &single] {
        connection_p50(lab, HOST_OUT, port, 50);
    }
    let mut samples: [Vec<Duration>; 2] = Default::default();
    for _ in 0..31 {
        samples[0].push(connection_p50(&loaded, HOST_OUT, port, 40));
        samples[1].push(connection_p50(&single, HOST_OUT, port, 40));
    }
    let [loaded_p50, single_p50] = samples.map(median);
    let r = ratio(loaded_p50, single_p50);
    rows.push(Row {
        scenario: "new connection p50, 10,000 single ports + 100 ranges published vs 1 port (a port in the last range)".into(),
        nsport: us(loaded_p50),
        baseline: us(single_p50),
        ratio: r,
        target: "≤ 1.15x".into(),
        met: r <= 1.15,
    });
}

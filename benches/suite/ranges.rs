//! Publishing a range in one command.

use std::time::{Duration, Instant};

use crate::commands::{NSPORT, docker_add, docker_chain, nsport_script, run, run_with_input};
use crate::lab::{BrNetfilter, Lab};
use crate::measure::{Row, faster, median};

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
    let comment = lab.run_in("host", || {
        // A table of the same shape for nft to load into, a map as a user would write it
        // (no counters, no comments), and nsport's own table, empty.
        let script = nsport_script().replace("table inet nsport", "table inet nftbench");
        run_with_input(&lab, "nft", &["-f", "-"], Some(&script));
        let plain = "table inet plain { map any4 { type inet_proto . inet_service : ipv4_addr . inet_service; } }";
        run_with_input(&lab, "nft", &["-f", "-"], Some(plain));
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
                samples[1].push(run_with_input(&lab, "nft", &["-f", "-"], Some(&equal)));
                run(&lab, "nft", &["flush map inet nftbench any4"]);
                samples[2].push(run_with_input(&lab, "nft", &["-f", "-"], Some(&plain)));
                run(&lab, "nft", &["flush map inet plain any4"]);
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

//! Publishing a range in one command.

use std::time::{Duration, Instant};

use crate::commands::{NSPORT, docker_add, docker_chain, nsport_script, run, run_with_input};
use crate::lab::{BrNetfilter, Lab};
use crate::measure::{Row, faster, median};

/// Scenario 2: a range in one command, against `nft -f` of the same elements and one
/// `iptables` call per port (Docker's way).
pub fn publish_range(rows: &mut Vec<Row>) {
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

//! Removing one mapping and applying many at 50,000.

use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use crate::commands::{NSPORT, ROUNDS, forget_tracked_flows, per_port, run};
use crate::lab::{BrNetfilter, Lab};
use crate::measure::{Row, median, ms, ratio};

/// Scenario 4b: removing one mapping and applying many, at 50,000, against publishing:
/// `rm` of one port against `add` of one (each reads only what it changes), and `apply` of
/// a saved listing of 50,000 onto an empty table against `add` of the same range.
pub fn scale(rows: &mut Vec<Row>) {
    let lab = Lab::new(BrNetfilter::Off);
    // add and rm alternating at N = 0 and 50,000, then `nft delete element`. Deleting
    // anything makes the kernel wait out an RCU grace period when the deleting netlink
    // socket closes, so `nft delete element` is the floor a removal is measured against.
    let mut medians = Vec::new();
    for n in [0u32, 50_000] {
        medians.push(lab.run_in("host", || {
            forget_tracked_flows();
            run(&lab, NSPORT, &["flush"]);
            run(&lab, NSPORT, &["add", "--to", "10.77.0.2", "9"]);
            if n > 0 {
                run(&lab, NSPORT, &["add", "--to", "10.77.0.2", &per_port(n)]);
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
    // The same removal in a namespace that tracks one connection, as every real host
    // does: `rm` then walks the conntrack table to forget the removed port's flows, after
    // its batch, while the kernel's grace period runs.
    let listener = lab.run_in("ns3", || TcpListener::bind("10.77.0.2:0").unwrap());
    let tracked = lab.run_in("host", || {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let tracked = nsport::netlink::conntrack::tracked_in_this_namespace();
        assert!(tracked.unwrap() > 0, "the connection is not tracked");
        let mut samples = Vec::new();
        for _ in 0..ROUNDS {
            run(&lab, NSPORT, &["add", "--to", "10.77.0.2", "5"]);
            samples.push(run(&lab, NSPORT, &["rm", "5"]));
        }
        drop(client);
        median(samples)
    });
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
    rows.push(Row {
        scenario: "rm of 1 port at N=50,000, the namespace tracking one connection, against none: the conntrack walk".into(),
        nsport: ms(tracked),
        baseline: ms(rm),
        ratio: ratio(tracked, rm),
        target: "(shown: overlaps the kernel's wait)".into(),
        met: true,
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
                &["add", "--to", "10.77.0.2", &per_port(50_000)],
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

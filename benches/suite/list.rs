//! Listing: `nsport ls --json` against `nft -j list table`.

use std::time::Duration;

use crate::commands::{NSPORT, per_port, run};
use crate::lab::{BrNetfilter, Lab};
use crate::measure::{Row, median, ms, ratio};

/// Scenario 5: `nsport ls --json` against `nft -j list table inet nsport`.
pub fn listing(rows: &mut Vec<Row>) {
    let lab = Lab::new(BrNetfilter::Off);
    for n in [10_000u32, 50_000] {
        let (ls, nft) = lab.run_in("host", || {
            run(&lab, NSPORT, &["flush"]);
            run(&lab, NSPORT, &["add", "--to", "10.77.0.2", &per_port(n)]);
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

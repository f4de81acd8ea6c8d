//! nsport as a library: `publish` from Rust.

use std::time::{Duration, Instant};

use crate::commands::{NSPORT, per_port, run};
use crate::lab::{BrNetfilter, Lab};
use crate::measure::{Row, median, ratio, us};

/// Scenario 4: `nsport::publish` from Rust at N = 0 and 50,000.
pub fn library(rows: &mut Vec<Row>) {
    let lab = Lab::new(BrNetfilter::Off);
    let target = nsport::Target::Addr("10.77.0.2".parse().unwrap());
    let options = nsport::PublishOptions::default();
    let mut medians = Vec::new();
    for n in [0u32, 50_000] {
        let took = lab.run_in("host", || {
            if n > 0 {
                run(
                    &lab,
                    NSPORT,
                    &["add", "--to", "10.77.0.2", &per_port(50_000)],
                );
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
            baseline: "0.15 ms".into(),
            ratio: took.as_secs_f64() / 0.15e-3,
            target: "≤ 0.15 ms".into(),
            met: *took <= Duration::from_micros(150),
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

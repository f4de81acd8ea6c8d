//! The overlap check (Docker's rule) stays flat: publishing a specific host address or an
//! interface when 50,000 wildcards are published costs what it costs when none are, and so
//! does publishing a wildcard (it reads only the maps of specific host sides).

use std::time::Duration;

use crate::commands::{NSPORT, ROUNDS, per_port, run};
use crate::lab::{BrNetfilter, Lab};
use crate::measure::{Row, median, ms, ratio};

/// One kind of host side, as `add` arguments, and how `rm` names it.
const SIDES: [(&str, &[&str], &[&str]); 3] = [
    ("a wildcard", &["5"], &["5"]),
    ("127.0.0.1", &["127.0.0.1:5:5"], &["127.0.0.1:5"]),
    (
        "--on eth9 (absent)",
        &["--on", "eth9", "5"],
        &["--on", "eth9", "5"],
    ),
];

pub fn overlap_check(rows: &mut Vec<Row>) {
    let lab = Lab::new(BrNetfilter::Off);
    let mut at_zero = [Duration::ZERO; 3];
    for n in [0u32, 50_000] {
        let medians = lab.run_in("host", || {
            run(&lab, NSPORT, &["flush"]);
            if n > 0 {
                run(&lab, NSPORT, &["add", "--to", "10.77.0.2", &per_port(n)]);
            } else {
                run(&lab, NSPORT, &["add", "--to", "10.77.0.2", "9"]);
                run(&lab, NSPORT, &["rm", "9"]);
            }
            let mut samples: [Vec<Duration>; 3] = Default::default();
            for _ in 0..ROUNDS {
                for (i, (_, add, rm)) in SIDES.iter().enumerate() {
                    let mut args = vec!["add", "--to", "10.77.0.2"];
                    args.extend(*add);
                    samples[i].push(run(&lab, NSPORT, &args));
                    let mut args = vec!["rm"];
                    args.extend(*rm);
                    run(&lab, NSPORT, &args);
                }
            }
            samples.map(median)
        });
        for (i, (name, _, _)) in SIDES.iter().enumerate() {
            if n == 0 {
                at_zero[i] = medians[i];
                continue;
            }
            let r = ratio(medians[i], at_zero[i]);
            rows.push(Row {
                scenario: format!("publish 1 port on {name}: N=50,000 wildcards against N=0"),
                nsport: ms(medians[i]),
                baseline: ms(at_zero[i]),
                ratio: r,
                target: "≤ 1.3x".into(),
                met: r <= 1.3,
            });
        }
    }
}

//! nsport as a library: `publish` from Rust, and what ending a thread that removed something
//! costs.

use std::time::{Duration, Instant};

use crate::commands::{NSPORT, ROUNDS, forget_tracked_flows, per_port, run};
use crate::lab::{BrNetfilter, Lab};
use crate::measure::{Row, median, ms, ratio, us};

/// Scenario 4: `nsport::publish` from Rust at N = 0 and 50,000, and the kernel's wait when
/// a netfilter socket that deleted closes.
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
            forget_tracked_flows();
            let spec = ["7".parse().unwrap()];
            let mut samples = Vec::new();
            for _ in 0..30 {
                let start = Instant::now();
                nsport::publish(&target, &options, &spec).unwrap();
                samples.push(start.elapsed());
                nsport::unpublish(&["7".parse().unwrap()], false).unwrap();
            }
            median(samples)
        });
        medians.push(took);
    }
    // The thread's socket closes when the thread ends; after a batch that deleted, the
    // kernel first waits for the deleted elements to be freed, an RCU grace period (its
    // netlink release notifier flushes nf_tables' destroy work). A command pays it at exit.
    let [after_add, after_removal] = lab.run_in("host", || {
        forget_tracked_flows();
        let mut samples: [Vec<Duration>; 2] = Default::default();
        for _ in 0..ROUNDS {
            // A thread that publishes, then one that removes what it published.
            for (removal, samples) in [false, true].into_iter().zip(&mut samples) {
                let ended = std::thread::scope(|scope| {
                    scope
                        .spawn(|| {
                            if removal {
                                nsport::unpublish(&["7".parse().unwrap()], false).unwrap();
                            } else {
                                nsport::publish(&target, &options, &["7".parse().unwrap()])
                                    .unwrap();
                            }
                            Instant::now()
                        })
                        .join()
                        .unwrap()
                });
                samples.push(ended.elapsed());
            }
        }
        run(&lab, NSPORT, &["flush"]);
        samples.map(median)
    });
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
    rows.push(Row {
        scenario: "a thread's end after a removal against after a publish: its netfilter socket's release (rm pays it at exit)".into(),
        nsport: ms(after_removal),
        baseline: ms(after_add),
        ratio: ratio(after_removal, after_add),
        target: "(shown: the kernel's wait)".into(),
        met: true,
    });
}

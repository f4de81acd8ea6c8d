//! nsport's benchmark suite: `sudo scripts/bench`.
//!
//! Everything runs in network namespaces this program creates (the test lab, see
//! `tests/lab/mod.rs`), and every command is started from a thread inside the lab's host
//! namespace, so that no `ip netns exec` is timed. Each comparison alternates its
//! contenders (A B A B …) in one run and compares medians: these machines are shared and
//! noisy, and only ratios measured side by side mean anything. The table is printed and
//! written into BENCHMARKS.md with the machine it ran on.
//!
//! One module per topic beside this file; a new topic is a module with a scenario
//! function and one line in `SCENARIOS` below.

#[path = "../../tests/lab/mod.rs"]
mod lab;

mod allow_from;
mod commands;
mod datapath;
mod footprint;
mod library;
mod list;
mod measure;
mod overlap;
mod publish;
mod quiet;
mod ranges;
mod remove;
mod report;
mod startup;
mod throughput;

use std::time::Instant;

use measure::Row;

/// A scenario adds its rows to the table.
type Scenario = fn(&mut Vec<Row>);

/// Every scenario, by the name `NSPORT_BENCH` selects it with, in the table's order.
const SCENARIOS: &[(&str, Scenario)] = &[
    ("publish one port", publish::publish_one),
    ("overlap check", overlap::overlap_check),
    ("publish a range", ranges::publish_range),
    ("ranges as intervals", ranges::ranges_as_intervals),
    ("data path", datapath::data_path),
    ("library", library::library),
    ("scale", remove::scale),
    ("listing", list::listing),
    ("footprint", footprint::footprint),
    ("throughput", throughput::throughput),
    ("start-up", startup::startup),
    ("allow-from", allow_from::allow_from),
];

fn main() {
    // Library calls in this process keep their record of settings in the lab's folder;
    // set before any thread starts.
    let state = std::env::temp_dir().join(format!("nsport-bench-{}", std::process::id()));
    // SAFETY: no other thread exists yet.
    unsafe { std::env::set_var("NSPORT_STATE_DIR", &state) };
    let started = Instant::now();
    let mut rows = Vec::new();
    // NSPORT_BENCH=NAME runs the scenarios whose name contains NAME, and leaves
    // BENCHMARKS.md alone: a partial table is not the suite's result.
    let only = std::env::var("NSPORT_BENCH").ok();
    for (name, scenario) in SCENARIOS {
        if only.as_deref().is_some_and(|only| !name.contains(only)) {
            continue;
        }
        quiet::wait_for_a_quiet_machine();
        eprintln!("bench: {name}…");
        scenario(&mut rows);
    }
    let _ = std::fs::remove_dir_all(&state);
    let (table, summary) = report::table(&rows, started.elapsed());
    println!("{table}\n{summary}");
    if only.is_none() {
        report::write_benchmarks_md(&table, &summary);
    }
}

//! Rows of the results table and the arithmetic of medians and ratios.

use std::time::Duration;

/// One line of the results table.
pub struct Row {
    pub scenario: String,
    pub nsport: String,
    pub baseline: String,
    pub ratio: f64,
    pub target: String,
    pub met: bool,
}

/// A row comparing nsport with a baseline that must be at least `times` slower.
pub fn faster(scenario: String, nsport: Duration, baseline: Duration, times: f64) -> Row {
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

/// A row comparing nsport with a baseline it may cost at most `times` of.
pub fn at_most(scenario: String, nsport: Duration, baseline: Duration, times: f64) -> Row {
    let r = ratio(nsport, baseline);
    Row {
        scenario,
        nsport: ms(nsport),
        baseline: ms(baseline),
        ratio: r,
        target: format!("≤ {times}x"),
        met: r <= times,
    }
}

pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// A row that says whether a "`times` faster than `tool`" target can be met by any program
/// started as a process: the time it allows (`tool` / `times`) against starting a Rust
/// hello world, the least any command costs. Below 1, no program meets it.
pub fn ceiling(scenario: String, tool: Duration, hello: Duration, times: f64) -> Row {
    let allowed = tool.div_f64(times);
    let r = ratio(allowed, hello);
    Row {
        scenario,
        nsport: format!("{} allowed", ms(allowed)),
        baseline: ms(hello),
        ratio: r,
        target: format!("≥ 1 (the {times}x target is reachable)"),
        met: r >= 1.0,
    }
}

//! Waiting, between scenarios, for the work a scenario left the kernel to finish.
//!
//! A lab's namespaces are deleted when its scenario ends, but the kernel frees them later,
//! in a worker: their conntrack tables, their nftables tables (50,000 elements in some),
//! their interfaces. On a machine of two cores that worker takes one of them while the
//! next scenario measures, and a scenario's rows then depend on which one ran before it.

use std::time::{Duration, Instant};

/// How long one look at the machine's load lasts.
const LOOK: Duration = Duration::from_millis(200);

/// The share of all cores' time that may be busy for the machine to count as quiet: this
/// process's own threads and a shared machine's background stay under it.
const QUIET: f64 = 0.10;

/// The longest wait; a machine that is never quiet is measured as it is, and said so.
const PATIENCE: Duration = Duration::from_secs(20);

/// Busy and total time of all cores so far, in clock ticks, from `/proc/stat`.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let line = stat.lines().next().expect("/proc/stat has a cpu line");
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().expect("a tick count"))
        .collect();
    let total: u64 = ticks.iter().sum();
    // idle and iowait are the fourth and fifth fields.
    let idle = ticks[3] + ticks.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Returns once the machine has been quiet for one look, or after `PATIENCE`; says on
/// stderr how long it waited when it had to.
pub fn wait_for_a_quiet_machine() {
    let started = Instant::now();
    loop {
        let (busy, total) = cpu_ticks();
        std::thread::sleep(LOOK);
        let (busy_after, total_after) = cpu_ticks();
        let share = (busy_after - busy) as f64 / (total_after - total).max(1) as f64;
        if share <= QUIET {
            let waited = started.elapsed();
            if waited > LOOK * 2 {
                eprintln!("bench: waited {waited:.1?} for the machine to go quiet");
            }
            return;
        }
        if started.elapsed() >= PATIENCE {
            eprintln!(
                "bench: the machine stayed busy ({:.0}% of its cores) for {PATIENCE:?}; measuring anyway",
                share * 100.0
            );
            return;
        }
    }
}

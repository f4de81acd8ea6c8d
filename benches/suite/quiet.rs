//! Waiting, between scenarios, for the work a scenario left the kernel to finish.
//!
//! A lab's namespaces are deleted when its scenario ends, but the kernel frees them later,
//! in a worker: their conntrack tables, their nftables tables (50,000 elements in some),
//! their interfaces. On a machine of two cores that worker takes one of them while the
//! next scenario measures, and a scenario's rows then depend on which one ran before it.

use std::time::{Duration, Instant};

/// How long one look at the machine's load lasts.
const LOOK: Duration = Duration::from_millis(200);

/// How many cores' worth of busy time the machine may show and still count as quiet: this
/// process's own threads and a shared machine's background stay under it, a worker that
/// keeps one core busy does not, however many cores there are.
const QUIET_CORES: f64 = 0.2;

/// The longest wait; a machine that is never quiet is measured as it is, and said so.
const PATIENCE: Duration = Duration::from_secs(20);

/// Busy and total time of all cores so far, in clock ticks, and the number of cores, from
/// `/proc/stat`.
fn cpu_ticks() -> (u64, u64, usize) {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let line = stat.lines().next().expect("/proc/stat has a cpu line");
    // user nice system idle iowait irq softirq steal; the guest times after them are
    // counted in user and nice already.
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().expect("a tick count"))
        .collect();
    let total: u64 = ticks.iter().sum();
    let idle = ticks[3] + ticks.get(4).copied().unwrap_or(0);
    let cores = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    (total.saturating_sub(idle), total, cores.max(1))
}

/// Returns once the machine has been quiet for one look, or after `PATIENCE`; says on
/// stderr how long it waited when it had to.
pub fn wait_for_a_quiet_machine() {
    let started = Instant::now();
    loop {
        let (busy, total, _) = cpu_ticks();
        std::thread::sleep(LOOK);
        let (busy_after, total_after, cores) = cpu_ticks();
        // Ticks can step back when a core goes offline: such a look counts as busy.
        let share = match (busy_after.checked_sub(busy), total_after.checked_sub(total)) {
            (Some(busy), Some(total)) if total > 0 => busy as f64 / total as f64,
            _ => 1.0,
        };
        if share * cores as f64 <= QUIET_CORES {
            let waited = started.elapsed();
            if waited > LOOK * 2 {
                eprintln!("bench: waited {waited:.1?} for the machine to go quiet");
            }
            return;
        }
        if started.elapsed() >= PATIENCE {
            eprintln!(
                "bench: the machine stayed busy ({:.1} cores' worth) for {PATIENCE:?}; measuring anyway",
                share * cores as f64
            );
            return;
        }
    }
}

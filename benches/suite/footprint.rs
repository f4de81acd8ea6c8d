//! Memory of one command, and nothing left running.

use std::process::Command;

use crate::commands::NSPORT;
use crate::lab::{BrNetfilter, Lab};
use crate::measure::Row;

/// Scenario 6: peak RSS of one `nsport add`, and nothing left running.
pub fn footprint(rows: &mut Vec<Row>) {
    let lab = Lab::new(BrNetfilter::Off);
    let kib = lab.run_in("host", || {
        let output = Command::new("/usr/bin/time")
            .args(["-f", "%M", NSPORT, "add", "--to", "10.77.0.2", "8"])
            .env("NSPORT_STATE_DIR", lab.state_dir())
            .output()
            .unwrap();
        assert!(output.status.success());
        let text = String::from_utf8_lossy(&output.stderr);
        text.lines().last().unwrap().trim().parse::<u64>().unwrap()
    });
    let left = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == "nsport")
        })
        .count();
    rows.push(Row {
        scenario: "peak RSS of one `nsport add`".into(),
        nsport: format!("{:.1} MB", kib as f64 / 1024.0),
        baseline: "10 MB".into(),
        ratio: kib as f64 / 10240.0,
        target: "< 10 MB".into(),
        met: kib < 10240,
    });
    rows.push(Row {
        scenario: "nsport processes left running afterwards".into(),
        nsport: left.to_string(),
        baseline: "0".into(),
        ratio: left as f64,
        target: "0".into(),
        met: left == 0,
    });
}

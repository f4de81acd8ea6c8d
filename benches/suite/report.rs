//! The results table: printed, and written into BENCHMARKS.md with the machine it ran on.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use crate::measure::Row;

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|model| model.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let version = |program: &str| {
        Command::new(program)
            .arg("--version")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default()
    };
    format!(
        "{cpu}, {cores} cores, Linux {}; {}; {}",
        kernel.trim(),
        version("nft"),
        version("iptables")
    )
}

/// The table of `rows` in Markdown, and a line counting the targets met.
pub fn table(rows: &[Row], took: Duration) -> (String, String) {
    let mut table = String::from(
        "| scenario | nsport | baseline | ratio | target | met |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for row in rows {
        let _ = writeln!(
            table,
            "| {} | {} | {} | {:.2} | {} | {} |",
            row.scenario,
            row.nsport,
            row.baseline,
            row.ratio,
            row.target,
            match (shown(row), row.met) {
                (true, _) => "—",
                (false, true) => "yes",
                (false, false) => "**no**",
            }
        );
    }
    let targets: Vec<&Row> = rows.iter().filter(|r| !shown(r)).collect();
    let met = targets.iter().filter(|r| r.met).count();
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let summary = format!(
        "{met} of {} met, and {} shown without a target; the suite took {:.0} s.",
        plural(targets.len(), "target", "targets"),
        plural(rows.len() - targets.len(), "row", "rows"),
        took.as_secs_f64()
    );
    (table, summary)
}

/// A row that only shows a ratio, its "target" in parentheses: it is neither met nor missed.
fn shown(row: &Row) -> bool {
    row.target.starts_with('(')
}

/// Replaces the results between the markers of BENCHMARKS.md.
pub fn write_benchmarks_md(table: &str, summary: &str) {
    let results = format!(
        "Machine: {}\n\nRun on {} (UTC date of the run).\n\n{table}\n{summary}\n",
        machine(),
        String::from_utf8_lossy(
            &Command::new("date")
                .arg("-u")
                .arg("+%Y-%m-%d %H:%M")
                .output()
                .unwrap()
                .stdout
        )
        .trim()
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    let (head, tail) = match (doc.find("<!-- results -->"), doc.find("<!-- /results -->")) {
        (Some(start), Some(end)) => (doc[..start].to_string(), doc[end..].to_string()),
        _ => (doc, "<!-- /results -->\n".to_string()),
    };
    std::fs::write(&path, format!("{head}<!-- results -->\n{results}{tail}")).unwrap();
}

//! Source allow-lists on the data path: the latency of a new connection through a port
//! limited by 1,000 prefixes among 10,000 published ports, against one port limited by one
//! prefix. The lists are two lookups in sets of intervals, so the two should not differ.

use crate::commands::{NSPORT, run};
use crate::datapath::{byte_server, connection_p50};
use crate::lab::{BrNetfilter, HOST_OUT, Lab};
use crate::measure::{Row, median, ratio, us};

/// The measured port; the other 9,999 mappings are published beside it without a list.
const PORT: u16 = 29999;

/// 1,000 prefixes: 999 of other networks, then the client's own (`out`, 192.0.2.2) last.
fn prefixes() -> Vec<String> {
    let mut out: Vec<String> = (0..999u32)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    out.push("192.0.2.2".into());
    out
}

/// A mappings file for `apply`: port `PORT` limited to `prefixes`, and the range beside it
/// when `with_range`.
fn mappings_file(prefixes: &[String], with_range: bool) -> String {
    let quoted: Vec<String> = prefixes.iter().map(|p| format!("\"{p}\"")).collect();
    let mut mappings = vec![format!(
        "{{\"to\": \"172.18.0.2\", \"publish\": \"{PORT}\", \"allow_from\": [{}]}}",
        quoted.join(", ")
    )];
    if with_range {
        mappings.push("{\"to\": \"172.18.0.2\", \"publish\": \"20000-29998\"}".into());
    }
    format!(
        "{{\"version\": 1, \"mappings\": [{}]}}",
        mappings.join(", ")
    )
}

/// Both states are taken in turns by one lab (`apply` switches it between them): two labs,
/// one per state, differ by more than the lists do. Their new connections wait on server
/// and client threads the scheduler places once per lab, and the ratio of two labs moved
/// between 0.90 and 1.44 from one run to the next with the same table in both.
pub fn allow_from(rows: &mut Vec<Row>) {
    let lab = Lab::new(BrNetfilter::Off);
    byte_server(&lab, PORT);
    let states = ["1 mapping, 1 prefix", "10,000 mappings, 1,000 prefixes"];
    let files = [
        (
            lab.state_dir().join("allow-one.json"),
            mappings_file(&["192.0.2.2".into()], false),
        ),
        (
            lab.state_dir().join("allow-many.json"),
            mappings_file(&prefixes(), true),
        ),
    ];
    std::fs::create_dir_all(lab.state_dir()).unwrap();
    for (path, text) in &files {
        std::fs::write(path, text).unwrap();
    }
    let switch_to = |state: usize| {
        let path = files[state].0.to_str().unwrap();
        lab.run_in("host", || run(&lab, NSPORT, &["apply", path]));
        // Warm up after the change, and prove the client is allowed.
        connection_p50(&lab, HOST_OUT, PORT, 10);
    };
    let mut samples: Vec<Vec<std::time::Duration>> = vec![Vec::new(); states.len()];
    // In turns, A B B A, so that neither state always follows the other.
    for round in 0..31 {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for state in order {
            switch_to(state);
            samples[state].push(connection_p50(&lab, HOST_OUT, PORT, 40));
        }
    }
    lab.run_in("host", || run(&lab, NSPORT, &["flush"]));
    let p50: Vec<std::time::Duration> = samples.into_iter().map(median).collect();
    let r = ratio(p50[1], p50[0]);
    rows.push(Row {
        scenario: format!(
            "new connection p50 through --allow-from: {} vs {}",
            states[1], states[0]
        ),
        nsport: us(p50[1]),
        baseline: us(p50[0]),
        ratio: r,
        target: "≤ 1.15x".into(),
        met: r <= 1.15,
    });
}

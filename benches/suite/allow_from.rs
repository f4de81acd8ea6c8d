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

pub fn allow_from(rows: &mut Vec<Row>) {
    let labs: Vec<(&str, Lab)> = ["1 mapping, 1 prefix", "10,000 mappings, 1,000 prefixes"]
        .into_iter()
        .map(|name| (name, Lab::new(BrNetfilter::Off)))
        .collect();
    let port = PORT.to_string();
    for (i, (_, lab)) in labs.iter().enumerate() {
        byte_server(lab, PORT);
        lab.run_in("host", || {
            let mut args = vec!["add", "--to", "172.18.0.2", &port];
            let list = if i == 0 {
                vec!["192.0.2.2".to_string()]
            } else {
                run(lab, NSPORT, &["add", "--to", "172.18.0.2", "20000-29998"]);
                prefixes()
            };
            for prefix in &list {
                args.extend(["--allow-from", prefix]);
            }
            run(lab, NSPORT, &args);
        });
        // Warm up, and prove the client is allowed.
        connection_p50(lab, HOST_OUT, PORT, 50);
    }
    // Short batches, interleaved: a slow moment of the shared machine hits both alike.
    let mut samples: Vec<Vec<std::time::Duration>> = vec![Vec::new(); labs.len()];
    for _ in 0..31 {
        for (i, (_, lab)) in labs.iter().enumerate() {
            samples[i].push(connection_p50(lab, HOST_OUT, PORT, 40));
        }
    }
    let p50: Vec<std::time::Duration> = samples.into_iter().map(median).collect();
    let r = ratio(p50[1], p50[0]);
    rows.push(Row {
        scenario: format!(
            "new connection p50 through --allow-from: {} vs {}",
            labs[1].0, labs[0].0
        ),
        nsport: us(p50[1]),
        baseline: us(p50[0]),
        ratio: r,
        target: "≤ 1.15x".into(),
        met: r <= 1.15,
    });
}

//! The data path: the latency of new connections through published ports.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::commands::{NSPORT, docker_chain, docker_rules, run, run_with_input};
use crate::lab::{BrNetfilter, HOST_OUT, Lab};
use crate::measure::{Row, median, ratio, us};

/// A TCP server in ns1 of `lab` on `port` that answers each connection with one byte.
pub fn byte_server(lab: &Lab, port: u16) {
    let listener = lab.run_in("ns1", || TcpListener::bind(("0.0.0.0", port)).unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(b"x");
        }
    });
}

/// p50 of `count` new connections (connect, read one byte, close) from `out`.
pub fn connection_p50(lab: &Lab, addr: Ipv4Addr, port: u16, count: usize) -> Duration {
    lab.run_in("out", || {
        let target = SocketAddr::from((addr, port));
        let mut samples = Vec::with_capacity(count);
        for _ in 0..count {
            let start = Instant::now();
            let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap();
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).unwrap();
            drop(stream);
            samples.push(start.elapsed());
        }
        median(samples)
    })
}

/// Scenario 3: the latency of a new connection with 10,000 ports published against 1,
/// for nsport's maps and for one iptables rule per port.
pub fn data_path(rows: &mut Vec<Row>) {
    let port = 29999;
    let labs: Vec<(&str, Lab)> = ["nsport 1", "nsport 10k", "iptables 1", "iptables 10k"]
        .into_iter()
        .map(|name| (name, Lab::new(BrNetfilter::Off)))
        .collect();
    for (name, lab) in &labs {
        byte_server(lab, port);
        lab.run_in("host", || match *name {
            "nsport 1" => {
                run(lab, NSPORT, &["add", "--to", "172.18.0.2", "29999"]);
            }
            // 10,000 single ports in the exact map: an identity range would be one
            // element (see `ranges`), so 9,999 of them are shifted.
            "nsport 10k" => {
                let shifted = "20000-29998:40000-49998";
                run(
                    lab,
                    NSPORT,
                    &["add", "--to", "172.18.0.2", shifted, "29999"],
                );
            }
            _ => {
                lab.write_sysctl("host", "net/ipv4/ip_forward", "1");
                docker_chain(lab);
                let first = if *name == "iptables 1" { 29999 } else { 20000 };
                let rules = docker_rules(first..30000, "172.18.0.2");
                run_with_input(lab, "iptables-restore", &["--noflush"], Some(&rules));
            }
        });
        connection_p50(lab, HOST_OUT, port, 50);
    }
    // Short batches, interleaved many times: the labs share the machine with whatever
    // else runs, and a slow moment should hit every contender alike.
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); labs.len()];
    for _ in 0..31 {
        for (i, (_, lab)) in labs.iter().enumerate() {
            samples[i].push(connection_p50(lab, HOST_OUT, port, 40));
        }
    }
    let p50: Vec<Duration> = samples.into_iter().map(median).collect();
    let r = ratio(p50[1], p50[0]);
    rows.push(Row {
        scenario: "new connection p50, 10,000 published vs 1: nsport maps".into(),
        nsport: us(p50[1]),
        baseline: us(p50[0]),
        ratio: r,
        target: "≤ 1.15x".into(),
        met: r <= 1.15,
    });
    let r = ratio(p50[3], p50[2]);
    rows.push(Row {
        scenario: "new connection p50, 10,000 published vs 1: one iptables-nft rule per port"
            .into(),
        nsport: us(p50[3]),
        baseline: us(p50[2]),
        ratio: r,
        target: "(shown for comparison)".into(),
        met: true,
    });
}

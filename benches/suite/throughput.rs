//! Bulk TCP through a published port.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::commands::{NSPORT, run};
use crate::lab::{BrNetfilter, HOST_OUT, Lab};
use crate::measure::{Row, median};

/// Transfers per path, the row comparing the two paths' medians. One transfer of 256 MiB
/// takes about 0.2 s here, and the ratio of two transfers made one after the other ranges
/// from 0.76 to 1.15 on this machine (measured with iperf3 in a lab of our own); with 7
/// per path the row read 0.73–0.96 over round 8's runs, so it takes 31.
const TRANSFERS: usize = 31;

/// Scenario 7: bulk TCP through the published port against straight to the namespace.
pub fn throughput(rows: &mut Vec<Row>) {
    const BYTES: usize = 256 << 20;
    let lab = Lab::new(BrNetfilter::Off);
    let listener = lab.run_in("ns1", || TcpListener::bind(("0.0.0.0", 9000)).unwrap());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        for mut stream in listener.incoming().flatten() {
            while stream.read(&mut buf).is_ok_and(|n| n > 0) {}
            let _ = stream.write_all(b"done");
        }
    });
    // The direct path is a host routing to its namespace on purpose: its forwarding is on
    // before nsport (which then closes nothing), and the target allows direct access.
    lab.write_sysctl("host", "net/ipv4/ip_forward", "1");
    lab.run_in("host", || {
        run(
            &lab,
            NSPORT,
            &["add", "--allow-direct", "--to", "172.18.0.2", "9000"],
        );
    });
    lab.ip("out", "route add 172.18.0.0/24 via 192.0.2.1");
    let send = |addr: Ipv4Addr| {
        lab.run_in("out", || {
            let chunk = vec![7u8; 1 << 20];
            let start = Instant::now();
            let mut stream = TcpStream::connect((addr, 9000)).unwrap();
            for _ in 0..BYTES / chunk.len() {
                stream.write_all(&chunk).unwrap();
            }
            stream.shutdown(std::net::Shutdown::Write).unwrap();
            let mut done = [0u8; 4];
            stream.read_exact(&mut done).unwrap();
            start.elapsed()
        })
    };
    let mut samples: [Vec<Duration>; 2] = Default::default();
    // In turns, A B B A: neither path always goes first.
    for round in 0..TRANSFERS {
        let paths = [HOST_OUT, Ipv4Addr::new(172, 18, 0, 2)];
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for path in order {
            samples[path].push(send(paths[path]));
        }
    }
    let [published, direct] = samples;
    let (published, direct) = (median(published), median(direct));
    let gbit = |d: Duration| (BYTES as f64 * 8.0) / d.as_secs_f64() / 1e9;
    let r = gbit(published) / gbit(direct);
    rows.push(Row {
        scenario: "bulk TCP through the published port vs straight to the namespace".into(),
        nsport: format!("{:.2} Gbit/s", gbit(published)),
        baseline: format!("{:.2} Gbit/s", gbit(direct)),
        ratio: r,
        target: "≥ 0.9x".into(),
        met: r >= 0.9,
    });
}

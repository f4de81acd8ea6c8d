//! Bulk TCP through a published port: against straight to the namespace, and against the
//! least any DNAT costs, one plain `nft` rule.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::commands::{NSPORT, run, run_with_input};
use crate::lab::{BrNetfilter, HOST_OUT, Lab};
use crate::measure::{Row, median};

/// Transfers per path, the rows comparing the paths' medians. One transfer of 256 MiB
/// takes about 0.2 s here, and the ratio of two transfers made one after the other ranges
/// from 0.76 to 1.15 on this machine (measured with iperf3 in a lab of our own); with 7
/// per path the row read 0.73–0.96 over round 8's runs, so it takes 31.
const TRANSFERS: usize = 31;

/// The target's port, published on the host's port of the same number.
const PORT: u16 = 9000;

/// What a user who wanted nothing but this one port forwarded would write: one DNAT rule,
/// no counters, no maps, no protections.
const PLAIN_DNAT: &str = "table ip nsport_bench_dnat {
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tip daddr 192.0.2.1 tcp dport 9000 dnat to 172.18.0.2
\t}
}
";

/// Scenario 7: bulk TCP through the published port, against straight to the namespace and
/// against the same port forwarded by one plain `nft` DNAT rule; and the direct path under
/// each table.
///
/// The lab takes both tables in turns (A B B A), nsport's and the plain rule's, never both:
/// nsport's counting chains would also see the plain rule's flows (they count every flow
/// that was DNATed), and two labs differ by more than what the rows measure (see the
/// `--allow-from` row).
pub fn throughput(rows: &mut Vec<Row>) {
    const BYTES: usize = 256 << 20;
    let lab = Lab::new(BrNetfilter::Off);
    let listener = lab.run_in("ns1", || TcpListener::bind(("0.0.0.0", PORT)).unwrap());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        for mut stream in listener.incoming().flatten() {
            while stream.read(&mut buf).is_ok_and(|n| n > 0) {}
            let _ = stream.write_all(b"done");
        }
    });
    // The direct path is a host routing to its namespace on purpose: its forwarding is on
    // before nsport (which then closes nothing, and leaves it on at `flush`), and the
    // target allows direct access.
    lab.write_sysctl("host", "net/ipv4/ip_forward", "1");
    lab.ip("out", "route add 172.18.0.0/24 via 192.0.2.1");
    let published = PORT.to_string();
    let nsport_table = || {
        lab.run_in("host", || {
            run(&lab, "nft", &["delete", "table", "ip", "nsport_bench_dnat"]);
            run(
                &lab,
                NSPORT,
                &["add", "--allow-direct", "--to", "172.18.0.2", &published],
            );
        });
    };
    let plain_table = || {
        lab.run_in("host", || {
            run(&lab, NSPORT, &["flush"]);
            run_with_input(&lab, "nft", &["-f", "-"], Some(PLAIN_DNAT));
        });
    };
    let send = |addr: Ipv4Addr| {
        lab.run_in("out", || {
            let chunk = vec![7u8; 1 << 20];
            let start = Instant::now();
            let mut stream = TcpStream::connect((addr, PORT)).unwrap();
            for _ in 0..BYTES / chunk.len() {
                stream.write_all(&chunk).unwrap();
            }
            stream.shutdown(std::net::Shutdown::Write).unwrap();
            let mut done = [0u8; 4];
            stream.read_exact(&mut done).unwrap();
            start.elapsed()
        })
    };
    let direct_addr = Ipv4Addr::new(172, 18, 0, 2);
    // The plain table first, so that the first switch to nsport's has one to delete; a
    // switch happens only when the table changes (A B B A takes each twice in a row).
    plain_table();
    let mut nsport_loaded = false;
    // Per table, its published path and the direct one: the direct path crosses the
    // hooks of whichever table is loaded.
    let [mut nsport, mut direct_nsport, mut plain, mut direct_plain]: [Vec<Duration>; 4] =
        Default::default();
    // In turns, A B B A: neither table, and neither path of a table, always goes first.
    for round in 0..TRANSFERS {
        let nsport_first = round % 2 == 0;
        for with_nsport in [nsport_first, !nsport_first] {
            if with_nsport != nsport_loaded {
                if with_nsport {
                    nsport_table();
                } else {
                    plain_table();
                }
                nsport_loaded = with_nsport;
                // The first transfer after a switch is not counted: whichever path took
                // it would pay for the switch.
                send(direct_addr);
            }
            let mut both = match with_nsport {
                true => [(HOST_OUT, &mut nsport), (direct_addr, &mut direct_nsport)],
                false => [(HOST_OUT, &mut plain), (direct_addr, &mut direct_plain)],
            };
            if !nsport_first {
                both.reverse();
            }
            for (addr, samples) in both {
                samples.push(send(addr));
            }
        }
    }
    // 31 rounds end on the plain table.
    lab.run_in("host", || match nsport_loaded {
        true => run(&lab, NSPORT, &["flush"]),
        false => run(&lab, "nft", &["delete", "table", "ip", "nsport_bench_dnat"]),
    });
    let [nsport, direct_nsport, plain, direct_plain] =
        [nsport, direct_nsport, plain, direct_plain].map(median);
    let gbit = |d: Duration| (BYTES as f64 * 8.0) / d.as_secs_f64() / 1e9;
    let row = |scenario: &str, a: Duration, b: Duration, target: &str, met: fn(f64) -> bool| {
        let r = gbit(a) / gbit(b);
        Row {
            scenario: scenario.into(),
            nsport: format!("{:.2} Gbit/s", gbit(a)),
            baseline: format!("{:.2} Gbit/s", gbit(b)),
            ratio: r,
            target: target.into(),
            met: met(r),
        }
    };
    rows.push(row(
        "bulk TCP through the published port vs straight to the namespace",
        nsport,
        direct_nsport,
        "≥ 0.9x",
        |r| r >= 0.9,
    ));
    rows.push(row(
        "bulk TCP through the published port vs through one plain `nft` DNAT rule (the least a DNAT costs)",
        nsport,
        plain,
        "≥ 0.9x",
        |r| r >= 0.9,
    ));
    rows.push(row(
        "bulk TCP through one plain `nft` DNAT rule vs straight to the namespace, with that rule's table",
        plain,
        direct_plain,
        "(shown: what DNAT itself costs)",
        |_| true,
    ));
    rows.push(row(
        "bulk TCP straight to the namespace, with nsport's table vs with the plain rule's",
        direct_nsport,
        direct_plain,
        "(shown: what nsport's hooks cost traffic it does not publish)",
        |_| true,
    ));
}

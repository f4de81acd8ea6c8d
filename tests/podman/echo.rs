//! The test server inside the Podman containers: std only, built with `rustc` and
//! `crt-static` so that it runs in a busybox-static image with no C library.
//!
//! `echo PORT[-END]...` answers every TCP connection and every UDP datagram on each port
//! with the address it came from, then closes the connection.

use std::io::Write;
use std::net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket};

fn main() {
    let mut threads = Vec::new();
    for arg in std::env::args().skip(1) {
        let (first, last) = match arg.split_once('-') {
            Some((a, b)) => (a.parse::<u16>().unwrap(), b.parse::<u16>().unwrap()),
            None => (arg.parse().unwrap(), arg.parse().unwrap()),
        };
        for port in first..=last {
            // [::] without IPV6_V6ONLY (the Linux default) takes both families.
            let at = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
            let listener = TcpListener::bind(at).expect("tcp bind");
            threads.push(std::thread::spawn(move || {
                for mut stream in listener.incoming().flatten() {
                    if let Ok(peer) = stream.peer_addr() {
                        let _ = stream.write_all(plain(peer).as_bytes());
                    }
                }
            }));
            let socket = UdpSocket::bind(at).expect("udp bind");
            threads.push(std::thread::spawn(move || {
                let mut buf = [0; 64];
                while let Ok((_, peer)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(plain(peer).as_bytes(), peer);
                }
            }));
        }
    }
    println!("ready");
    for thread in threads {
        let _ = thread.join();
    }
}

/// The peer's address as the lab's probes expect it: IPv4-mapped addresses unmapped.
fn plain(peer: SocketAddr) -> String {
    match peer.ip() {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        v4 => v4.to_string(),
    }
}

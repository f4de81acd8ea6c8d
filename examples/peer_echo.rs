//! A tiny TCP server and client for the demo lab, so the demo needs no extra packages.
//!
//! `peer_echo serve PORT` answers every connection with the address it came from;
//! `peer_echo connect ADDR PORT` prints what the server answered, or fails after a second.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["serve", port] => {
            let listener = TcpListener::bind(("0.0.0.0", port.parse().expect("a port")))
                .expect("cannot listen");
            for mut stream in listener.incoming().flatten() {
                if let Ok(peer) = stream.peer_addr() {
                    let _ = writeln!(stream, "hello {}, this is the namespace", peer.ip());
                }
            }
            ExitCode::SUCCESS
        }
        ["connect", addr, port] => {
            let target: SocketAddr = format!("{addr}:{port}").parse().expect("an address");
            let answer = TcpStream::connect_timeout(&target, Duration::from_secs(1)).and_then(
                |mut stream| {
                    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
                    let mut answer = String::new();
                    stream.read_to_string(&mut answer)?;
                    Ok(answer)
                },
            );
            match answer {
                Ok(answer) => {
                    print!("{answer}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    println!("no answer: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!("usage: peer_echo serve PORT | peer_echo connect ADDR PORT");
            ExitCode::from(2)
        }
    }
}

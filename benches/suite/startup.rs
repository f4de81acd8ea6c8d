//! Start-up: `nsport --version` against a Rust hello world built the same way.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::commands::NSPORT;
use crate::measure::{Row, at_most, median};

/// A hello world compiled by the same rustc with the release profile's settings (one
/// codegen unit, LTO, panic=abort) and linked as nsport is (GCC's static unwinder in
/// place of libgcc_s.so, see build.rs), printing a version line as `--version` does.
pub fn hello_world() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nsport-bench-hello-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("hello.rs");
    std::fs::write(&source, "fn main() { println!(\"hello 0.1.0\"); }\n").unwrap();
    let binary = dir.join("hello");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let mut rustc = Command::new(rustc);
    if let Some(unwinder) = static_unwinder(&dir) {
        rustc
            .arg("-L")
            .arg(format!("native={}", unwinder.display()));
    }
    let status = rustc
        .args([
            "--edition=2024",
            "-C",
            "opt-level=3",
            "-C",
            "codegen-units=1",
        ])
        .args(["-C", "lto=fat", "-C", "panic=abort", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .unwrap();
    assert!(status.success(), "rustc could not build the hello world");
    binary
}

/// A directory offering GCC's `libgcc_eh.a` as `libgcc_s.a`, as build.rs does for nsport.
fn static_unwinder(dir: &std::path::Path) -> Option<PathBuf> {
    let output = Command::new("cc")
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()?;
    let archive = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    if !archive.is_absolute() {
        return None;
    }
    let unwinder = dir.join("unwinder");
    std::fs::create_dir_all(&unwinder).ok()?;
    std::os::unix::fs::symlink(&archive, unwinder.join("libgcc_s.a")).ok()?;
    Some(unwinder)
}

pub fn start(program: &PathBuf, args: &[&str]) -> Duration {
    let start = Instant::now();
    let status = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    let took = start.elapsed();
    assert!(status.success());
    took
}

pub fn startup(rows: &mut Vec<Row>) {
    let hello = hello_world();
    let nsport = PathBuf::from(NSPORT);
    let mut samples: [Vec<Duration>; 2] = Default::default();
    // Short commands on a noisy machine: many rounds, alternating.
    for _ in 0..201 {
        samples[0].push(start(&nsport, &["--version"]));
        samples[1].push(start(&hello, &[]));
    }
    let _ = std::fs::remove_dir_all(hello.parent().unwrap());
    let [version, hello] = samples;
    rows.push(at_most(
        "`nsport --version` vs a Rust hello world built the same way".into(),
        median(version),
        median(hello),
        1.2,
    ));
}

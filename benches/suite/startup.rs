//! Start-up: `nsport --version` against a Rust hello world built the same way.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::commands::NSPORT;
use crate::lab::start_up_order::Placement;
use crate::measure::{Row, at_most, median, ms, ratio};

/// A hello world compiled by the same rustc with the release profile's settings (one
/// codegen unit, LTO, panic=abort) and linked as nsport is (GCC's static unwinder in
/// place of libgcc_s.so, see build.rs), printing a version line as `--version` does.
pub fn hello_world() -> PathBuf {
    build_hello("hello", HELLO, &[])
}

/// The hello world's source: a version line, as `--version` prints.
const HELLO: &str = "fn main() { println!(\"hello 0.1.0\"); }\n";

/// The same hello world, linked to libmnl as nsport is: the shared library, since Debian
/// and Ubuntu ship no archive of it (see build.rs). The linker keeps a library that
/// nothing calls only outside `--as-needed`, which rustc passes.
fn hello_world_with_libmnl() -> PathBuf {
    let binary = build_hello(
        "hello-mnl",
        HELLO,
        &[
            "-C",
            "link-arg=-Wl,--push-state,--no-as-needed,-lmnl,--pop-state",
        ],
    );
    // The library's name among the ones the program needs (its dynamic string table).
    let bytes = std::fs::read(&binary).unwrap();
    assert!(
        bytes.windows(11).any(|w| w == b"libmnl.so.0"),
        "the hello world was not linked to libmnl"
    );
    binary
}

/// Compiles `source_text` into `name` as described on `hello_world`, with `extra`
/// arguments for rustc.
fn build_hello(name: &str, source_text: &str, extra: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nsport-bench-hello-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join(format!("{name}.rs"));
    std::fs::write(&source, source_text).unwrap();
    let binary = dir.join(name);
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
        .args(["-C", "lto=fat", "-C", "panic=abort"])
        .args(extra)
        .arg("-o")
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
    let link = unwinder.join("libgcc_s.a");
    // Both hello worlds are built in one directory; the second finds the link made.
    if !link.exists() {
        std::os::unix::fs::symlink(&archive, &link).ok()?;
    }
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
    let hello_mnl = hello_world_with_libmnl();
    let nsport = PathBuf::from(NSPORT);
    let mut samples: [Vec<Duration>; 3] = Default::default();
    // Short commands on a noisy machine: many rounds, alternating.
    for _ in 0..201 {
        samples[0].push(start(&nsport, &["--version"]));
        samples[1].push(start(&hello, &[]));
        samples[2].push(start(&hello_mnl, &[]));
    }
    let _ = std::fs::remove_dir_all(hello.parent().unwrap());
    let [version, hello, hello_mnl] = samples.map(median);
    rows.push(at_most(
        "`nsport --version` vs a Rust hello world built the same way".into(),
        version,
        hello,
        1.2,
    ));
    // Where the difference goes: loading the shared libmnl, and the rest.
    rows.push(shown(
        "the same hello world linked to the shared libmnl, as nsport must be, vs without it",
        hello_mnl,
        hello,
        "(shown: loading libmnl)",
    ));
    rows.push(shown(
        "`nsport --version` vs the hello world linked to libmnl",
        version,
        hello_mnl,
        "(shown: the rest)",
    ));
    rows.push(start_up_order_found());
}

/// How many of the functions `link/start-up-order/bench.txt` names the binary defines, and
/// whether they lie side by side at the front of its text, as build.rs asks LLD to lay
/// them: a function renamed since the list was written falls out of the order without a
/// word, and another linker leaves the order out. Below nine in ten found,
/// `scripts/start-up-order` should write the lists again.
fn start_up_order_found() -> Row {
    let placement = Placement::of(NSPORT, &["bench.txt"]);
    let side_by_side = placement.side_by_side();
    let share = placement.found as f64 / placement.listed.max(1) as f64;
    Row {
        scenario: "functions of link/start-up-order/bench.txt the binary defines, and whether they come first in its text".into(),
        nsport: format!(
            "{}, {}",
            placement.found,
            if side_by_side { "side by side" } else { "scattered" }
        ),
        baseline: placement.listed.to_string(),
        ratio: share,
        target: "≥ 0.9, side by side (else write the lists again)".into(),
        met: share >= 0.9 && side_by_side,
    }
}

/// A row that shows a ratio and sets no target.
fn shown(scenario: &str, nsport: Duration, baseline: Duration, target: &str) -> Row {
    Row {
        scenario: scenario.into(),
        nsport: ms(nsport),
        baseline: ms(baseline),
        ratio: ratio(nsport, baseline),
        target: target.into(),
        met: true,
    }
}

//! The functions that start-up and a publish run lie side by side at the front of the
//! binary's text (build.rs passes `link/start-up-order/` to LLD).
//!
//! The lists name the functions of release and bench builds, whose own symbols hash
//! differently from this test's debug build; the standard library's come precompiled and
//! keep their names in every build, so the debug binary has about 90 of them. Without the
//! lists (`NSPORT_START_UP_ORDER=off`) those end 5.9 MB into its 6 MB of text; with them,
//! 47 KB in.

use std::collections::HashSet;
use std::process::Command;

const NSPORT: &str = env!("CARGO_BIN_EXE_nsport");

/// Every name of the lists, as build.rs reads them.
fn listed() -> HashSet<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/link/start-up-order");
    let mut names = HashSet::new();
    for list in ["release.txt", "bench.txt"] {
        let text = std::fs::read_to_string(format!("{dir}/{list}"))
            .unwrap_or_else(|e| panic!("{dir}/{list}: {e}"));
        names.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    names
}

/// The binary's functions: address, size and name, by address.
fn functions() -> Vec<(u64, u64, String)> {
    let output = Command::new("nm")
        .args(["--defined-only", "--print-size", "--numeric-sort", NSPORT])
        .output()
        .expect("nm, from binutils");
    assert!(output.status.success(), "nm could not read {NSPORT}");
    let mut functions = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [address, size, kind, name] = fields[..]
            && matches!(kind, "t" | "T" | "w" | "W")
        {
            let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
            functions.push((hex(address), hex(size), name.to_string()));
        }
    }
    functions.sort();
    functions
}

#[test]
fn listed_functions_come_first_exactly_when_lld_links() {
    let binary = std::fs::read(NSPORT).unwrap();
    let by_lld = binary.windows(11).any(|w| w == b"Linker: LLD");
    let listed = listed();
    let functions = functions();
    let start = functions.first().expect("the binary has functions").0;
    let present: Vec<&(u64, u64, String)> = functions
        .iter()
        .filter(|(_, _, name)| listed.contains(name))
        .collect();
    assert!(
        present.len() >= 20,
        "only {} of the listed functions are in the binary",
        present.len()
    );
    let end = present.iter().map(|(a, s, _)| a + s).max().unwrap() - start;
    let total: u64 = present.iter().map(|(_, s, _)| s).sum();
    // Side by side: within twice their own size and one window the kernel maps at once
    // (LLD may put other sections of the same input file between them).
    let side_by_side = end <= 2 * total + 64 * 1024;
    // GNU ld (Rust's linker before 1.90) refuses the lists, and build.rs's probe leaves
    // them out rather than fail the build: the functions stay in the compiler's order.
    assert_eq!(
        side_by_side,
        by_lld,
        "linked by LLD: {by_lld}; {} listed functions ({total} bytes) end {end} bytes into the text",
        present.len()
    );
}

//! The functions that start-up and a publish run lie side by side at the front of the
//! binary's text (build.rs passes `link/start-up-order/` to LLD).
//!
//! The lists name the functions of release and bench builds, whose own symbols hash
//! differently from this test's debug build; the standard library's come precompiled and
//! keep their names in every build, so the debug binary has about 90 of them. Without the
//! lists (`NSPORT_START_UP_ORDER=off`) those end 5.9 MB into its 6 MB of text; with them,
//! 47 KB in.

mod lab;

use lab::start_up_order::Placement;

const NSPORT: &str = env!("CARGO_BIN_EXE_nsport");

#[test]
fn listed_functions_come_first_exactly_when_lld_links() {
    let binary = std::fs::read(NSPORT).unwrap();
    let by_lld = binary.windows(11).any(|w| w == b"Linker: LLD");
    let placement = Placement::of(NSPORT, &["release.txt", "bench.txt"]);
    assert!(
        placement.found >= 20,
        "only {} of the listed functions are in the binary",
        placement.found
    );
    // GNU ld (Rust's linker before 1.90) refuses the lists, and build.rs's probe leaves
    // them out rather than fail the build: the functions stay in the compiler's order.
    assert_eq!(
        placement.side_by_side(),
        by_lld,
        "linked by LLD: {by_lld}; {} listed functions ({} bytes) end {} bytes into the text",
        placement.found,
        placement.total,
        placement.end
    );
}

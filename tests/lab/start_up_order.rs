//! Where the functions of `link/start-up-order/` lie in a binary: build.rs asks LLD to lay
//! them side by side at the front of its text.

use std::collections::HashSet;
use std::process::Command;

/// The listed functions a binary defines, and how far into its text they reach.
pub struct Placement {
    /// Names in the lists read.
    pub listed: usize,
    /// Of those, the ones the binary defines.
    pub found: usize,
    /// Where the last of them ends, in bytes from the start of the text.
    pub end: u64,
    /// Their sizes, summed.
    pub total: u64,
}

impl Placement {
    /// Reads `lists` (file names under `link/start-up-order/`) and the functions of
    /// `binary` (with `nm`, from binutils).
    pub fn of(binary: &str, lists: &[&str]) -> Placement {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/link/start-up-order");
        let mut listed = HashSet::new();
        for list in lists {
            let text = std::fs::read_to_string(format!("{dir}/{list}"))
                .unwrap_or_else(|e| panic!("{dir}/{list}: {e}"));
            listed.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            );
        }
        let output = Command::new("nm")
            .args(["--defined-only", "--print-size", "--numeric-sort", binary])
            .output()
            .expect("nm, from binutils");
        assert!(output.status.success(), "nm could not read {binary}");
        // (address, size, listed) of each function.
        let mut functions: Vec<(u64, u64, bool)> = Vec::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [address, size, kind, name] = fields[..]
                && matches!(kind, "t" | "T" | "w" | "W")
            {
                let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
                functions.push((hex(address), hex(size), listed.contains(name)));
            }
        }
        functions.sort();
        let start = functions.first().map_or(0, |f| f.0);
        let found: Vec<&(u64, u64, bool)> = functions.iter().filter(|f| f.2).collect();
        Placement {
            listed: listed.len(),
            found: found.len(),
            end: found
                .iter()
                .map(|(a, s, _)| a + s - start)
                .max()
                .unwrap_or(0),
            total: found.iter().map(|(_, s, _)| s).sum(),
        }
    }

    /// Whether the functions found lie within twice their own size and one 64 KiB window
    /// (the kernel maps a binary's pages that many at once) from the start of the text:
    /// LLD may put other sections of the same input file between them.
    pub fn side_by_side(&self) -> bool {
        self.found > 0 && self.end <= 2 * self.total + 64 * 1024
    }
}

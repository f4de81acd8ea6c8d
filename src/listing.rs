//! `nsport ls` for people: one aligned row per mapping, names a terminal can show, and the
//! sources column when some port has an allow-list; and the row `ls --json` prints.

use std::collections::HashMap;

use nsport::{Listing, with_port};

/// One mapping as `ls --json` prints it: the listing, its address family, and what stops
/// one of its paths from working (with the fix), if anything.
#[derive(serde::Serialize)]
pub(crate) struct Row<'a> {
    #[serde(flatten)]
    pub(crate) listing: &'a Listing,
    pub(crate) family: &'static str,
    pub(crate) problem: Option<&'a nsport::doctor::Problem>,
}

/// The names under /run/netns, by the inode of their namespace.
fn netns_names() -> HashMap<u64, String> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| {
                    let inode = std::fs::metadata(entry.path()).ok()?.ino();
                    Some((inode, entry.file_name().to_string_lossy().into_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A cell as a terminal can show it: a name holding a control character (a newline that
/// would fake a row, an escape sequence) is shown escaped, as Rust writes it.
fn printable(cell: String) -> String {
    if cell.chars().any(char::is_control) {
        cell.escape_default().to_string()
    } else {
        cell
    }
}

/// The human listing: one aligned row per mapping.
pub(crate) fn table(listings: &[Listing], problems: &[Option<nsport::doctor::Problem>]) -> String {
    let header = [
        "PROTO", "HOST", "TARGET", "VIA", "NETNS", "PACKETS", "BYTES", "STATUS",
    ]
    .map(String::from);
    // The sources column appears only when some port has an allow-list.
    let limited = listings.iter().any(|l| !l.mapping.allow_from.is_empty());
    let names = if listings.iter().any(|l| {
        l.mapping
            .netns
            .as_deref()
            .is_some_and(|n| n.starts_with('/'))
    }) {
        netns_names()
    } else {
        HashMap::new()
    };
    let rows: Vec<[String; 8]> = listings
        .iter()
        .zip(problems)
        .map(|(listing, problem)| {
            let m = &listing.mapping;
            let mut status = match (&listing.shadows, listing.stale, problem) {
                (_, true, _) => "stale: namespace gone".to_string(),
                (Some(owner), false, _) => format!("shadows {owner}"),
                (None, false, Some(problem)) => {
                    format!("{} (fix: {})", problem.status, problem.fix)
                }
                (None, false, None) => "ok".to_string(),
            };
            // Mappings published over each other with --force: which takes whose traffic.
            if !listing.shadows_mappings.is_empty() {
                status.push_str(&format!(
                    "; shadows {}",
                    listing.shadows_mappings.join(", ")
                ));
            }
            if !listing.shadowed_by.is_empty() {
                status.push_str(&format!("; shadowed by {}", listing.shadowed_by.join(", ")));
            }
            // A range is one row: its first and last port.
            let ports = m.host_ports_text();
            let mut host = match m.host_addr {
                Some(addr) => with_port(addr, &ports),
                // Every address of the mapping's family; IPv6 ones never include [::1].
                None if m.is_ipv6() => format!("[*]:{ports}"),
                None => format!("*:{ports}"),
            };
            if let Some(on) = &m.on {
                host.push_str(&format!(" on {on}"));
            }
            [
                m.proto.to_string(),
                host,
                with_port(m.to_addr, m.to_ports_text()),
                m.via.clone(),
                match (&m.container, &m.netns) {
                    // Container IDs are long; twelve characters name one, as Docker shows.
                    (Some(id), _) => format!("cni:{}", id.chars().take(12).collect::<String>()),
                    // A path such as /proc/PID/ns/net: the name, when the namespace has one.
                    (None, Some(netns)) if netns.starts_with('/') => m
                        .netns_inode
                        .and_then(|inode| names.get(&inode).cloned())
                        .unwrap_or_else(|| netns.clone()),
                    (None, Some(netns)) => netns.clone(),
                    (None, None) => "-".into(),
                },
                listing.packets.to_string(),
                listing.bytes.to_string(),
                status,
            ]
        })
        .map(|row: [String; 8]| row.map(printable))
        .collect();
    let (header, rows) = if limited {
        with_sources_column(header, rows, listings)
    } else {
        (
            header.to_vec(),
            rows.into_iter().map(|r| r.to_vec()).collect(),
        )
    };
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut text = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}", width = *width))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// The table with a FROM column before STATUS: the sources allowed to use each mapping's
/// host port, `*` for every source. A long list is shortened; `ls --json` gives it whole.
fn with_sources_column(
    header: [String; 8],
    rows: Vec<[String; 8]>,
    listings: &[Listing],
) -> (Vec<String>, Vec<Vec<String>>) {
    const SHOWN: usize = 3;
    let insert = |row: &[String], cell: String| {
        let mut row = row.to_vec();
        row.insert(7, cell);
        row
    };
    let rows = rows
        .iter()
        .zip(listings)
        .map(|(row, listing)| {
            let list = &listing.mapping.allow_from;
            let mut cell: Vec<String> = list.iter().take(SHOWN).map(ToString::to_string).collect();
            if list.len() > SHOWN {
                cell.push(format!("+{} more", list.len() - SHOWN));
            }
            let cell = if list.is_empty() {
                "*".into()
            } else {
                cell.join(",")
            };
            insert(row, cell)
        })
        .collect();
    (insert(&header, "FROM".into()), rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_fake_rows_or_drive_the_terminal() {
        assert_eq!(printable("ns1".into()), "ns1");
        assert_eq!(printable("new\nline".into()), "new\\nline");
        assert_eq!(printable("a\u{1b}[31mred".into()), "a\\u{1b}[31mred");
    }
}

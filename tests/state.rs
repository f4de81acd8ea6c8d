//! The settings records under the state directory do not grow forever: `flush` removes a
//! namespace's own files, and `prune` removes those of network namespaces that are gone.

mod lab;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use lab::{BrNetfilter, Lab};

fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs nsport in `role`'s namespace with the lab's state directory.
fn nsport_in(lab: &Lab, role: &str, args: &[&str]) {
    let output = Command::new("ip")
        .args(["netns", "exec", &lab.ns(role), env!("CARGO_BIN_EXE_nsport")])
        .args(args)
        .env("NSPORT_STATE_DIR", lab.state_dir())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?} in {role}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn records_of_gone_namespaces_are_pruned_and_flush_leaves_none() {
    let mut lab = Lab::new(BrNetfilter::Off);
    lab.add_namespace("gone");
    let dir = lab.state_dir();
    // A change in a namespace of its own leaves that namespace's files behind.
    nsport_in(&lab, "gone", &["prune"]);
    let of_gone = files(&dir);
    assert!(
        of_gone.iter().any(|f| f.ends_with(".inode"))
            && of_gone.iter().any(|f| f.ends_with(".lock")),
        "{of_gone:?}"
    );
    // The host publishes something: its own files stay while it has mappings.
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "127.0.0.1:4000:3000"]);
    let with_host = files(&dir);
    let of_host: BTreeSet<String> = with_host.difference(&of_gone).cloned().collect();
    assert!(!of_host.is_empty());
    // The namespace goes; the next prune takes its files and leaves the host's.
    lab.ip_netns_del("gone");
    lab.nsport_ok(&["prune"]);
    let after = files(&dir);
    assert!(after.is_disjoint(&of_gone), "left behind: {after:?}");
    assert!(of_host.iter().all(|f| after.contains(f)), "{after:?}");
    // flush of the last mapping leaves nothing of the host's either.
    lab.nsport_ok(&["flush"]);
    let after_flush = files(&dir);
    assert!(
        after_flush.iter().all(|f| !f.starts_with("netns-")),
        "{after_flush:?}"
    );
}

//! Container IDs as real runtimes make them (64 hex digits) are too long to record in an
//! element comment whole and are recorded as digests: DEL and GC must still find them.
//! Found by tests/podman.rs, where every stop left the container's mappings behind.

mod lab;

use lab::*;
use serde_json::{Value, json};

fn count(lab: &Lab) -> usize {
    let listing: Value = serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    listing.as_array().unwrap().len()
}

#[test]
fn del_and_gc_find_runtime_length_container_ids() {
    let mut lab = Lab::new(BrNetfilter::Off);
    let nsport = env!("CARGO_BIN_EXE_nsport");
    let ids = ["a".repeat(64), "b".repeat(64)];
    let mut configs = Vec::new();
    for (n, (id, role)) in ids.iter().zip(["ctr1", "ctr2"]).enumerate() {
        lab.add_namespace(role);
        let result = lab.cni_attach(id, &lab.ns(role));
        let config = json!({
            "cniVersion": "1.0.0", "name": "labnet", "type": "nsport",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [{"hostPort": 8080 + n, "containerPort": 80}]},
            "prevResult": result,
        });
        let out = lab.cni(nsport, "ADD", id, &lab.ns(role), &config);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        configs.push(config);
    }
    assert!(
        lab.nft("host", "list table inet nsport").contains("cni=#"),
        "recorded as a digest"
    );
    assert_eq!(count(&lab), 2);
    // GC keeps the valid attachment (by its full ID) and removes the other.
    let gc = json!({
        "cniVersion": "1.1.0", "name": "labnet", "type": "nsport",
        "cni.dev/valid-attachments": [{"containerID": ids[0], "ifname": "eth0"}],
    });
    assert!(lab.cni(nsport, "GC", "", "", &gc).status.success());
    assert_eq!(count(&lab), 1);
    // DEL by the full ID removes the last one.
    let out = lab.cni(nsport, "DEL", &ids[0], &lab.ns("ctr1"), &configs[0]);
    assert!(out.status.success());
    assert_eq!(count(&lab), 0);
}

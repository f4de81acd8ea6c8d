//! Kernel settings under /proc/sys/net, of the namespace nsport runs in.
//!
//! nsport writes the files directly rather than running `sysctl`, and reports what was
//! there before so that a caller can say what it changed.

use std::fs;
use std::io;
use std::path::PathBuf;

/// A setting that nsport turns on, with the value it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub path: PathBuf,
    pub previous: String,
}

fn ensure(path: PathBuf, value: &str) -> io::Result<Option<Changed>> {
    let previous = fs::read_to_string(&path)?.trim().to_string();
    if previous == value {
        return Ok(None);
    }
    fs::write(&path, value)?;
    Ok(Some(Changed { path, previous }))
}

/// `net.ipv4.ip_forward=1`: traffic from outside is forwarded to the namespace.
pub fn enable_ip_forward() -> io::Result<Option<Changed>> {
    ensure(PathBuf::from("/proc/sys/net/ipv4/ip_forward"), "1")
}

/// `net.ipv4.conf.IFACE.route_localnet=1`: lets DNATed 127.0.0.1 traffic leave through
/// `iface`. Only safe together with the guard chain, which drops 127/8 arriving from
/// anywhere but `lo`.
pub fn enable_route_localnet(iface: &str) -> io::Result<Option<Changed>> {
    ensure(
        PathBuf::from(format!("/proc/sys/net/ipv4/conf/{iface}/route_localnet")),
        "1",
    )
}

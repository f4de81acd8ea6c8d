//! Kernel settings under /proc/sys/net, of the namespace nsport runs in.
//!
//! nsport writes the files directly rather than running `sysctl`.

use std::fs;
use std::io;
use std::path::PathBuf;

/// One setting, by its /proc/sys path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl(PathBuf);

impl Sysctl {
    /// `net.ipv4.ip_forward`: whether traffic from outside is forwarded to the namespaces.
    pub fn ip_forward() -> Sysctl {
        Sysctl(PathBuf::from("/proc/sys/net/ipv4/ip_forward"))
    }

    /// `net.ipv6.conf.all.forwarding`: the same for IPv6.
    pub fn ipv6_forwarding() -> Sysctl {
        Sysctl(PathBuf::from("/proc/sys/net/ipv6/conf/all/forwarding"))
    }

    /// `net.ipv4.conf.IFACE.route_localnet`: whether DNATed 127.0.0.1 traffic may leave
    /// through `iface`. Only safe together with the guard chain, which drops 127/8
    /// arriving from anywhere but `lo`.
    pub fn route_localnet(iface: &str) -> Sysctl {
        Sysctl(PathBuf::from(format!(
            "/proc/sys/net/ipv4/conf/{iface}/route_localnet"
        )))
    }

    /// The dotted name, as `sysctl` prints it.
    pub fn name(&self) -> String {
        let relative = self.0.strip_prefix("/proc/sys").unwrap_or(&self.0);
        relative
            .to_string_lossy()
            .trim_start_matches('/')
            .replace('/', ".")
    }

    pub fn read(&self) -> io::Result<String> {
        Ok(fs::read_to_string(&self.0)?.trim().to_string())
    }

    pub fn write(&self, value: &str) -> io::Result<()> {
        log::info!("sysctl {}={value}", self.name());
        fs::write(&self.0, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dotted() {
        assert_eq!(Sysctl::ip_forward().name(), "net.ipv4.ip_forward");
        assert_eq!(
            Sysctl::route_localnet("br0").name(),
            "net.ipv4.conf.br0.route_localnet"
        );
    }
}

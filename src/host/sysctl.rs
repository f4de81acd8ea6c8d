//! Kernel settings under /proc/sys/net, of the namespace nsport runs in.
//!
//! nsport writes the files directly rather than running `sysctl`.

use std::fs;
use std::io::{self, Read};
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

    /// The interfaces (and `all`, `default`) whose route_localnet is 1, sorted.
    pub fn route_localnet_on() -> Vec<String> {
        let Ok(dir) = fs::read_dir("/proc/sys/net/ipv4/conf") else {
            return Vec::new();
        };
        let mut on: Vec<String> = dir
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|iface| Sysctl::route_localnet(iface).read().is_ok_and(|v| v == "1"))
            .collect();
        on.sort();
        on
    }

    /// `net.ipv6.conf.IFACE.accept_ra`: 2 keeps accepting router advertisements once
    /// IPv6 forwarding is on (1 stops).
    pub fn accept_ra(iface: &str) -> Sysctl {
        Sysctl(PathBuf::from(format!(
            "/proc/sys/net/ipv6/conf/{iface}/accept_ra"
        )))
    }

    /// Every interface's `accept_ra`, and `default`'s (what new interfaces get), but not
    /// `all`'s, which the kernel does not consult for it.
    pub fn every_accept_ra() -> Vec<Sysctl> {
        let Ok(dir) = fs::read_dir("/proc/sys/net/ipv6/conf") else {
            return Vec::new();
        };
        let mut all: Vec<Sysctl> = dir
            .flatten()
            .filter(|entry| entry.file_name() != "all")
            .map(|entry| Sysctl(entry.path().join("accept_ra")))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The path under /proc/sys, which is how the settings record names a setting (an
    /// interface name may hold a dot, so the dotted name cannot be turned back).
    pub fn key(&self) -> String {
        let relative = self.0.strip_prefix("/proc/sys").unwrap_or(&self.0);
        relative
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string()
    }

    /// The setting a record's key names; `None` for a key outside /proc/sys/net.
    pub fn from_key(key: &str) -> Option<Sysctl> {
        let safe = key.starts_with("net/") && !key.split('/').any(|part| part == "..");
        safe.then(|| Sysctl(PathBuf::from("/proc/sys").join(key)))
    }

    /// The dotted name, as `sysctl` prints it.
    pub fn name(&self) -> String {
        let relative = self.0.strip_prefix("/proc/sys").unwrap_or(&self.0);
        relative
            .to_string_lossy()
            .trim_start_matches('/')
            .replace('/', ".")
    }

    /// The value, trimmed. A sysctl answers its whole value, newline included, to the
    /// first read: one `read` after the `open` is enough for a value that ends in one
    /// (every numeric value does), where reading to the end would cost a `statx` and a
    /// second `read` of nothing, a fifth of a publish's system calls.
    pub fn read(&self) -> io::Result<String> {
        let mut file = fs::File::open(&self.0)?;
        let mut buffer = [0u8; 64];
        let len = file.read(&mut buffer)?;
        let mut bytes = buffer[..len].to_vec();
        if len == 0 || len == buffer.len() || bytes.last() != Some(&b'\n') {
            file.read_to_end(&mut bytes)?;
        }
        let text =
            String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(text.trim().to_string())
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

    #[test]
    fn a_value_is_read_whole_with_or_without_its_newline() {
        let dir = std::env::temp_dir().join(format!("nsport-sysctl-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let long = "7 ".repeat(100);
        for (content, value) in [
            ("1\n", "1"),
            ("0", "0"),
            ("", ""),
            (long.as_str(), long.trim()),
            ("4096\t16384\t4194304\n", "4096\t16384\t4194304"),
        ] {
            let path = dir.join("value");
            fs::write(&path, content).unwrap();
            assert_eq!(Sysctl(path).read().unwrap(), value, "{content:?}");
        }
        // The real thing, as the kernel answers it.
        let forward = Sysctl::ip_forward().read().unwrap();
        assert!(forward == "0" || forward == "1", "{forward:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

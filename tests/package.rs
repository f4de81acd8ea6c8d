//! The Debian package (scripts/package) and the plain installer (scripts/install), checked
//! without installing anything on this machine: the package is unpacked with `dpkg-deb -x`
//! into a directory of the test's, and the installer runs with DESTDIR. (CI, whose machine
//! is thrown away, also installs and purges the package for real: see .ci/run.)

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory removed when dropped, even on panic.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("nsport-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn script(name: &str) -> Command {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/").to_string() + name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn gunzip(path: &Path) -> String {
    run(Command::new("gzip").arg("-dc").arg(path))
}

/// Checks an installed tree: every file there, the binary runs, the man page, the
/// completions, the units pointing at the binary, and the CNI link resolving to it.
fn check_tree(root: &Path, bindir: &str, prefix: &str, unitdir: &str, cnidir: &str) {
    let bin = root.join(bindir.trim_start_matches('/')).join("nsport");
    let version = run(Command::new(&bin).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("nsport {}", env!("CARGO_PKG_VERSION"))
    );
    let prefix = root.join(prefix.trim_start_matches('/'));
    let man = gunzip(&prefix.join("share/man/man1/nsport.1.gz"));
    assert!(
        man.lines()
            .any(|l| l.to_ascii_lowercase().starts_with(".th nsport 1")),
        "{man}"
    );
    for sub in ["add", "apply", "export", "metrics"] {
        assert!(man.contains(sub), "man page lacks {sub}");
    }
    let bash = read(&prefix.join("share/bash-completion/completions/nsport"));
    assert!(bash.contains("complete -F _nsport"), "{bash}");
    assert!(
        read(&prefix.join("share/zsh/vendor-completions/_nsport")).starts_with("#compdef nsport")
    );
    assert!(
        read(&prefix.join("share/fish/vendor_completions.d/nsport.fish"))
            .contains("complete -c nsport")
    );
    let units = root.join(unitdir.trim_start_matches('/'));
    let service = read(&units.join("nsport.service"));
    for line in [
        format!("ExecStart={bindir}/nsport apply --skip-missing /etc/nsport/mappings.json"),
        format!("ExecReload={bindir}/nsport apply --skip-missing /etc/nsport/mappings.json"),
        "PartOf=nftables.service".to_string(),
        "ReloadPropagatedFrom=nftables.service".to_string(),
        "After=network-online.target nftables.service".to_string(),
        "ConditionPathExists=/etc/nsport/mappings.json".to_string(),
        "WantedBy=multi-user.target nftables.service".to_string(),
    ] {
        assert!(
            service.lines().any(|l| l == line),
            "nsport.service lacks {line}:\n{service}"
        );
    }
    assert!(!service.contains("@BINDIR@"));
    let metrics = read(&units.join("nsport-metrics.service"));
    assert!(
        metrics.contains(&format!("{bindir}/nsport metrics > ")),
        "{metrics}"
    );
    assert!(read(&units.join("nsport-metrics.timer")).contains("OnUnitActiveSec="));
    // The CNI plugin link is relative and resolves to the binary inside the same tree.
    let link = root.join(cnidir.trim_start_matches('/')).join("nsport");
    let target = std::fs::read_link(&link).expect("CNI plugin link");
    assert!(target.is_relative(), "{}", target.display());
    assert_eq!(
        std::fs::canonicalize(&link).unwrap(),
        std::fs::canonicalize(&bin).unwrap()
    );
    assert!(root.join("etc/nsport").is_dir());
}

#[test]
fn debian_package_holds_every_file() {
    let dir = TempDir::new("package");
    let deb = run(script("package")
        .arg(env!("CARGO_BIN_EXE_nsport"))
        .arg(dir.0.join("out")));
    let deb = PathBuf::from(deb.trim());
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(
        deb.file_name().unwrap().to_str().unwrap(),
        format!("nsport_{}_{}.deb", env!("CARGO_PKG_VERSION"), arch.trim())
    );
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    for field in [
        "Package: nsport".to_string(),
        format!("Version: {}", env!("CARGO_PKG_VERSION")),
        "Depends: ".to_string(),
    ] {
        assert!(info.contains(&field), "{info}");
    }
    // The packages of the shared libraries the binary loads (libnftnl is linked in when
    // its archive is installed, see build.rs), and no other.
    let loaded = run(Command::new("ldd").arg(env!("CARGO_BIN_EXE_nsport")));
    for (lib, package) in [
        ("libc.so.6", "libc6"),
        ("libmnl.so.0", "libmnl0"),
        ("libnftnl.so.11", "libnftnl11"),
    ] {
        assert_eq!(
            info.contains(package),
            loaded.contains(lib),
            "Depends and the libraries loaded disagree on {package}: {info}\n{loaded}"
        );
    }
    for script in ["postinst", "prerm", "postrm"] {
        assert!(info.contains(script), "{info}");
    }
    // The exact file list: nothing missing, nothing unexpected.
    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let mut files: Vec<String> = contents
        .lines()
        .filter(|line| !line.starts_with('d'))
        .map(|line| {
            let path = line.split_whitespace().nth(5).unwrap();
            path.trim_start_matches('.').to_string()
        })
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "/lib/systemd/system/nsport-metrics.service",
            "/lib/systemd/system/nsport-metrics.timer",
            "/lib/systemd/system/nsport.service",
            "/usr/bin/nsport",
            "/usr/lib/cni/nsport",
            "/usr/share/bash-completion/completions/nsport",
            "/usr/share/doc/nsport/README.md.gz",
            "/usr/share/fish/vendor_completions.d/nsport.fish",
            "/usr/share/man/man1/nsport.1.gz",
            "/usr/share/zsh/vendor-completions/_nsport",
        ]
    );
    assert!(
        contents
            .lines()
            .all(|line| line.split_whitespace().nth(1) == Some("root/root")),
        "every file owned by root: {contents}"
    );
    let root = dir.0.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    check_tree(
        &root,
        "/usr/bin",
        "/usr",
        "/lib/systemd/system",
        "/usr/lib/cni",
    );
    // The md5sums match what was unpacked.
    let control = dir.0.join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    run(Command::new("md5sum")
        .arg("--check")
        .arg("--quiet")
        .arg(control.join("md5sums"))
        .current_dir(&root));
}

#[test]
fn installer_honours_prefix_and_destdir() {
    let dir = TempDir::new("install");
    let out = run(script("install")
        .arg(env!("CARGO_BIN_EXE_nsport"))
        .env("DESTDIR", &dir.0)
        .env("PREFIX", "/usr/local"));
    assert!(out.contains("installed nsport"), "{out}");
    check_tree(
        &dir.0,
        "/usr/local/bin",
        "/usr/local",
        "/usr/local/lib/systemd/system",
        "/opt/cni/bin",
    );
    // Installing twice is harmless (the link is replaced, not nested).
    run(script("install")
        .arg(env!("CARGO_BIN_EXE_nsport"))
        .env("DESTDIR", &dir.0)
        .env("PREFIX", "/usr/local"));
    check_tree(
        &dir.0,
        "/usr/local/bin",
        "/usr/local",
        "/usr/local/lib/systemd/system",
        "/opt/cni/bin",
    );
}

//! Links libnftnl statically when its archive is installed (Debian's and Ubuntu's
//! libnftnl-dev ship `libnftnl.a`; libmnl-dev ships no archive, so libmnl stays shared).
//!
//! nftnl-sys asks pkg-config, which never links a library under /usr statically; a search
//! directory holding only the archive, given before the system's, makes the linker take it.
//! Loading a shared libnftnl cost about 0.07 ms of every command's start-up (its mapping,
//! and the binding of its symbols and libmnl's). `NSPORT_LINK_NFTNL=dynamic`, or a
//! `LIBNFTNL_LIB_DIR` of one's own, keeps the shared library.
//!
//! Also asks the linker to put the functions that `--version`, a publish and a removal run
//! side by side at the front of the text (`link/start-up-order/`, written by
//! `scripts/start-up-order`): the kernel maps a binary's pages 64 KiB at a time as they are
//! first touched, and those functions were spread over the whole 2.2 MB text. A publish
//! makes 10–12 page faults fewer and takes 1.7–3.4% less time, `--version` 4–10 faults
//! fewer and 1.8–2.3% (alternated comparisons, BENCHMARKS.md round 11). Only LLD (Rust's
//! default linker on x86-64 Linux since 1.90) reads such a file, so a probe link decides;
//! `NSPORT_START_UP_ORDER=off` leaves the text in the compiler's order.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NSPORT_START_UP_ORDER");
    if std::env::var("NSPORT_START_UP_ORDER").as_deref() != Ok("off") {
        start_up_order();
    }
    println!("cargo:rerun-if-env-changed=NSPORT_LINK_GCC");
    if std::env::var("NSPORT_LINK_GCC").as_deref() != Ok("dynamic") {
        static_unwinder();
    }
    println!("cargo:rerun-if-env-changed=NSPORT_LINK_NFTNL");
    println!("cargo:rerun-if-env-changed=LIBNFTNL_LIB_DIR");
    if std::env::var_os("LIBNFTNL_LIB_DIR").is_some()
        || std::env::var("NSPORT_LINK_NFTNL").as_deref() == Ok("dynamic")
    {
        return;
    }
    let Some(archive) = archive() else {
        return;
    };
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = out.join("static-nftnl");
    std::fs::create_dir_all(&dir).expect("create the static library directory");
    let link = dir.join("libnftnl.a");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&archive, &link).expect("link the libnftnl archive");
    println!("cargo:rerun-if-changed={}", archive.display());
    println!("cargo:rustc-link-search=native={}", dir.display());
}

/// libnftnl's archive, in the directory pkg-config names for the library.
fn archive() -> Option<PathBuf> {
    let output = Command::new("pkg-config")
        .args(["--variable=libdir", "libnftnl"])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let libdir = String::from_utf8(output.stdout).ok()?;
    let archive = Path::new(libdir.trim()).join("libnftnl.a");
    archive.is_file().then_some(archive)
}

/// Offers `libgcc_eh.a` as `libgcc_s.a` in a directory searched before the system's, when
/// the C compiler has it.
fn static_unwinder() {
    let output = Command::new("cc")
        .arg("-print-file-name=libgcc_eh.a")
        .output();
    let Ok(output) = output else { return };
    let Ok(path) = String::from_utf8(output.stdout) else {
        return;
    };
    let archive = PathBuf::from(path.trim());
    // Without the archive, cc answers the bare name.
    if !archive.is_absolute() || !archive.is_file() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = out.join("static-gcc");
    std::fs::create_dir_all(&dir).expect("create the static unwinder directory");
    let link = dir.join("libgcc_s.a");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&archive, &link).expect("link the unwinder archive");
    println!("cargo:rerun-if-changed={}", archive.display());
    println!("cargo:rustc-link-search=native={}", dir.display());
}

/// Passes the lists of `link/start-up-order/` to the linker of nsport's binaries, as one
/// file, when the linker takes it: `release.txt` (the binary `cargo build --release` makes)
/// first, then `bench.txt` (the one `cargo bench` makes, whose symbols hash differently).
/// A function a list names that the binary does not have (renamed since the list was
/// written, or the other build's) is skipped without a warning. Cargo compiles the crate
/// again whenever this script runs again, so changed lists link anew.
fn start_up_order() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let dir = manifest.join("link").join("start-up-order");
    // Only paths that exist: cargo takes a missing one as changed, and would build the
    // crate again on every build. The directory's own line catches lists added to it.
    if !dir.is_dir() {
        return;
    }
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for list in ["release.txt", "bench.txt"] {
        let path = dir.join(list);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        println!("cargo:rerun-if-changed={}", path.display());
        // Symbol names are ASCII; a stray byte costs its own line, not the list.
        let text = String::from_utf8_lossy(&bytes);
        for name in text.lines().map(str::trim).filter(|name| !name.is_empty()) {
            if seen.insert(name.to_string()) {
                names.push(name.to_string());
            }
        }
    }
    if names.is_empty() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let order = out.join("start-up-order.txt");
    if std::fs::write(&order, names.join("\n") + "\n").is_err() {
        return;
    }
    // Each option its own argument after -Xlinker: `-Wl,` would split a path at a comma.
    let args = [
        "-Xlinker".to_string(),
        format!("--symbol-ordering-file={}", order.display()),
        "-Xlinker".to_string(),
        "--no-warn-symbol-ordering".to_string(),
    ];
    if !linker_takes(&args) {
        println!(
            "cargo:warning=the linker takes no symbol ordering file (GNU ld?): the functions \
             start-up runs keep the compiler's order (see build.rs)"
        );
        return;
    }
    for arg in args {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}

/// Whether a program linked as nsport will be (the same rustc, target, flags and linker)
/// links with `args`: GNU ld refuses `--symbol-ordering-file`.
fn linker_takes(args: &[String]) -> bool {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = out.join("linker-probe");
    if std::fs::create_dir_all(&dir).is_err()
        || std::fs::write(dir.join("probe.rs"), "fn main() {}\n").is_err()
    {
        return false;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut command = Command::new(rustc);
    if let Ok(target) = std::env::var("TARGET") {
        command.args(["--target", &target]);
    }
    // The flags cargo passes every crate, and the linker configured for the target
    // (`target.<triple>.linker`), which cargo passes apart from them.
    if let Ok(flags) = std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        command.args(flags.split('\x1f').filter(|flag| !flag.is_empty()));
    }
    if let Some(linker) = std::env::var_os("RUSTC_LINKER") {
        let mut arg = std::ffi::OsString::from("linker=");
        arg.push(linker);
        command.arg("-C").arg(arg);
    }
    for arg in args {
        command.arg("-C").arg(format!("link-arg={arg}"));
    }
    command
        .arg("-o")
        .arg(dir.join("probe"))
        .arg(dir.join("probe.rs"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

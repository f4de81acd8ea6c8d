//! Links libnftnl statically when its archive is installed (Debian's and Ubuntu's
//! libnftnl-dev ship `libnftnl.a`; libmnl-dev ships no archive, so libmnl stays shared).
//!
//! nftnl-sys asks pkg-config, which never links a library under /usr statically; a search
//! directory holding only the archive, given before the system's, makes the linker take it.
//! Loading a shared libnftnl cost about 0.07 ms of every command's start-up (its mapping,
//! and the binding of its symbols and libmnl's). `NSPORT_LINK_NFTNL=dynamic`, or a
//! `LIBNFTNL_LIB_DIR` of one's own, keeps the shared library.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
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

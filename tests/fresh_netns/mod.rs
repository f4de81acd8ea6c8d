//! For the kernel checks of the netlink layer (`netlink_kernel.rs`, `rtnetlink_kernel.rs`):
//! each runs on a thread of its own inside a namespace of its own, which goes with the
//! thread, so nothing can touch the host's.

/// Runs `test` on a thread inside a fresh, empty network namespace.
pub fn in_fresh_netns(test: impl FnOnce() + Send + 'static) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "namespace tests need root, and may not skip in CI"
        );
        eprintln!("skipped: needs root");
        return;
    }
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare a netns");
        test();
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

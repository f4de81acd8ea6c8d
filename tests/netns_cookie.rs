//! The namespace cookie, which names a namespace's settings record and writer lock, in a
//! file of its own: its test waits for the kernel to free a namespace, which other tests
//! making and leaving namespaces in the same process hold up (the kernel frees namespaces
//! one batch at a time).

use std::os::unix::fs::MetadataExt;

use nix::sched::{CloneFlags, setns, unshare};
use nsport::netlink::netns_cookie;

/// The inode of the calling thread's network namespace.
fn inode() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

/// A namespace that took the inode of one the thread was in before is another namespace:
/// the kernel hands a freed namespace's inode number to the next one made (the lowest free
/// number), so the cookie must not be remembered by inode, or a library user's thread
/// would take the writer lock and the record of a namespace that is gone. The inode of
/// the namespace left is freed when the kernel's clean-up of it runs, and other
/// namespaces may hold it for a while, so new ones are made until one takes it: those that
/// took a lower number are kept, filling the numbers before it.
#[test]
fn a_namespace_reusing_an_inode_has_its_own_cookie() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "namespace tests need root, and may not skip in CI"
        );
        eprintln!("skipped: needs root");
        return;
    }
    let thread = std::thread::spawn(|| {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare a netns");
        let home = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare");
        let (gone_inode, gone_cookie) = (inode(), netns_cookie().unwrap());
        // Leaving the namespace frees it: the thread held its only reference.
        setns(&home, CloneFlags::CLONE_NEWNET).expect("setns home");
        let mut below = Vec::new();
        for _ in 0..2000 {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare");
            let now = inode();
            if now == gone_inode {
                assert_ne!(
                    netns_cookie().unwrap(),
                    gone_cookie,
                    "the cookie of a namespace that is gone, for the one that took its inode"
                );
                return;
            }
            if now < gone_inode {
                below.push(std::fs::File::open("/proc/thread-self/ns/net").unwrap());
            }
            setns(&home, CloneFlags::CLONE_NEWNET).expect("setns home");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no new namespace took inode {gone_inode} in 2000 tries");
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

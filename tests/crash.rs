//! Crashes and broken state (issue 10): SIGKILL at any moment, a full state directory,
//! a corrupt settings record. Whatever happens, no interface is left with route_localnet
//! on without an intact guard, and the next command repairs what is left.

mod lab;

use lab::invariants::{self, Table};
use lab::soak::{self, SoakLab};
use lab::*;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The second soak: the same 8 writers as the concurrency soak, each command
/// killed with SIGKILL 0–20 ms after it started, for `NSPORT_SOAK_SECS`. After the next
/// command (a publish, then `ls`), every invariant holds.
#[test]
fn sigkill_soak_next_command_restores_the_invariants() {
    let soak = SoakLab::new(BrNetfilter::Off);
    let seed = soak::seed();
    let stats = soak::run_writers(&soak, soak::soak_secs(), true, seed);
    // A killed writer may leave anything behind: no check at quiescence, only after the
    // next command.
    let mut violations = soak::finish(&soak, false);
    violations.extend(soak::grouped(&stats.violations));
    println!(
        "NSPORT_SOAK_SEED={seed}: {} commands, {} killed, {} violating commands; {:?}",
        stats.commands,
        stats.killed,
        stats.violations.len(),
        stats.outcomes
    );
    // Precondition: the soak did kill commands in flight.
    assert!(stats.killed > 0, "no command was killed");
    invariants::assert_none(
        &violations,
        &format!("SIGKILL soak (NSPORT_SOAK_SEED={seed})"),
    );
}

/// A tmpfs of one page, mounted for the test and unmounted when dropped (even on panic).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(lab: &Lab) -> Tmpfs {
        let dir = std::env::temp_dir().join(format!("{}-fullrun", lab.ns("x")));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = Tmpfs(dir);
        sh(&["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", dir.path()]);
        dir
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// Fills it: a file grows until the filesystem refuses more.
    fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.0.join("filler")).unwrap();
        let chunk = [0u8; 512];
        let mut written = 0;
        // Bounded: 1 MiB is far more than a 4 KiB tmpfs holds.
        while written < 1 << 20 {
            match file.write(&chunk) {
                Ok(n) => written += n,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                    return;
                }
            }
            file.flush().unwrap();
        }
        panic!("a 4 KiB tmpfs took 1 MiB");
    }

    /// Every file but the filler, with its contents.
    fn records(&self) -> Vec<(String, String)> {
        std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap() != "filler" && p.is_file())
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                (p.display().to_string(), text)
            })
            .collect()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = std::process::Command::new("umount")
                .args(["-l"])
                .arg(&self.0)
                .status();
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn nsport_in(lab: &Lab, state_dir: &str, args: &[&str]) -> Output {
    lab.nsport_command(args)
        .env("NSPORT_STATE_DIR", state_dir)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_string()
}

/// Issue 10: with the state directory full, a publish that needs route_localnet either
/// fails leaving route_localnet 0, or succeeds with the original value recorded. Never
/// route_localnet 1 without a record and an intact guard. Once there is room again, the
/// next commands work and `flush` puts everything back.
#[test]
fn full_state_dir_never_leaves_route_localnet_unrecorded() {
    let lab = Lab::new(BrNetfilter::Off);
    let _ns1 = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    let _ns3 = lab.serve_tcp("ns3", Ipv4Addr::UNSPECIFIED, 3000);
    let run = Tmpfs::new(&lab);
    run.fill();
    let ns1 = lab.ns("ns1");
    let mut violations = Vec::new();
    // Both kinds of mapping that serve the host's loopback: every address (br0), and
    // 127.0.0.1 only (v3).
    for (args, via) in [
        (vec!["add", "--netns", &ns1, "3000"], "br0"),
        (
            vec!["add", "--to", "10.77.0.2", "127.0.0.1:4000:3000"],
            "v3",
        ),
    ] {
        let output = nsport_in(&lab, run.path(), &args);
        let localnet = lab.read_sysctl("host", &format!("net/ipv4/conf/{via}/route_localnet"));
        let recorded = run.records().iter().any(|(_, text)| {
            serde_json::from_str::<serde_json::Value>(text).is_ok() && text.contains(via)
        });
        let guard = match Table::read(&lab) {
            None => Some("there is no table".to_string()),
            Some(table) => table.guard_problem(),
        };
        println!(
            "{args:?} with a full state dir: exit {:?}, route_localnet on {via} {localnet}, \
             recorded {recorded}: {}",
            output.status.code(),
            stderr(&output)
        );
        if output.status.success() {
            if localnet != "1" || !recorded {
                violations.push(format!(
                    "{args:?} succeeded, but route_localnet on {via} is {localnet} and \
                     recorded is {recorded}"
                ));
            }
        } else if localnet != "0" {
            violations.push(format!(
                "{args:?} failed ({}), but left route_localnet on {via} at {localnet}{}",
                stderr(&output),
                if recorded {
                    ""
                } else {
                    " with no record of it"
                }
            ));
        }
        if localnet == "1"
            && let Some(problem) = guard
        {
            violations.push(format!("route_localnet on {via} is 1 but {problem}"));
        }
    }
    if lab.neighbour_reads_host_loopback() {
        violations.push("ns2 reads a service bound to the host's 127.0.0.1".into());
    }
    // Room again: the next commands work, and flush puts back what was set.
    std::fs::remove_file(run.0.join("filler")).unwrap();
    let output = nsport_in(&lab, run.path(), &["add", "--netns", &ns1, "3001:3000"]);
    if !output.status.success() {
        violations.push(format!("add with room again failed: {}", stderr(&output)));
    }
    violations.extend(invariants::check(&lab));
    let output = nsport_in(&lab, run.path(), &["flush"]);
    if !output.status.success() {
        violations.push(format!("flush failed: {}", stderr(&output)));
    }
    violations.extend(invariants::check_state(&lab));
    invariants::assert_none(&violations, "a publish with a full state directory");
}

/// The settings records in a state directory.
fn record_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

/// Issue 10: a corrupt record (garbage JSON in the state directory). `flush` still
/// removes the table, puts route_localnet back to 0 on the table's interfaces, warns
/// naming the file and exits 0; the next commands work.
#[test]
fn corrupt_record_does_not_stop_flush_or_later_commands() {
    let lab = Lab::new(BrNetfilter::Off);
    let _ns1 = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    let ns1 = lab.ns("ns1");
    let localnet = "net/ipv4/conf/br0/route_localnet";
    lab.nsport_ok(&["add", "--netns", &ns1, "3000"]);
    assert_eq!(lab.read_sysctl("host", localnet), "1");
    let files = record_files(&lab.state_dir());
    assert!(!files.is_empty(), "no record in {:?}", lab.state_dir());
    for file in &files {
        std::fs::write(file, "{\"route_localnet\": {\"br0\": \x00garbage").unwrap();
    }
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let names_a_file = |text: &str| names.iter().any(|name| text.contains(name.as_str()));
    let mut violations = Vec::new();
    // A listing either works or says which file is wrong.
    let output = lab.nsport(&["ls"]);
    if !output.status.success() && !names_a_file(&stderr(&output)) {
        violations.push(format!(
            "ls failed without naming the corrupt record: {}",
            stderr(&output)
        ));
    }
    let output = lab.nsport(&["flush"]);
    println!(
        "flush with a corrupt record: exit {:?}: {}",
        output.status.code(),
        stderr(&output)
    );
    if !output.status.success() {
        violations.push(format!("flush failed: {}", stderr(&output)));
    }
    if !names_a_file(&stderr(&output)) {
        violations.push(format!(
            "flush did not name the corrupt record {names:?}: {}",
            stderr(&output)
        ));
    }
    if Table::read(&lab).is_some() {
        violations.push("the table is still there after flush".into());
    }
    violations.extend(invariants::check_state(&lab));
    if lab.neighbour_reads_host_loopback() {
        violations.push("ns2 reads a service bound to the host's 127.0.0.1".into());
    }
    // The next commands work, and leave a consistent host.
    for args in [vec!["add", "--netns", &ns1, "3000"], vec!["ls"]] {
        let output = lab.nsport(&args);
        if !output.status.success() {
            violations.push(format!("{args:?} after flush failed: {}", stderr(&output)));
        }
    }
    violations.extend(invariants::check(&lab));
    let output = lab.nsport(&["flush"]);
    if !output.status.success() {
        violations.push(format!("the second flush failed: {}", stderr(&output)));
    }
    violations.extend(invariants::check_state(&lab));
    invariants::assert_none(&violations, "a corrupt settings record");
}

/// A removal killed between its commit and putting its settings back leaves route_localnet
/// on, recorded, where no mapping goes through any more (what the SIGKILL soak once ended
/// on). The kernel's side of that moment is made here by deleting the element as the
/// removal's batch did; an `add` that cannot trust the record does not know, and the next
/// command that reads every mapping (`ls`) puts it back, saying so.
#[test]
fn route_localnet_left_on_by_a_killed_removal_is_put_back_by_ls() {
    let lab = Lab::new(BrNetfilter::Off);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "127.0.0.1:4001:3000",
        "192.0.2.1:4002:3000",
    ]);
    let localnet = || lab.read_sysctl("host", "net/ipv4/conf/br0/route_localnet");
    assert_eq!(localnet(), "1");
    // The removal's batch: 4002 still needs every helper of the target.
    lab.nft(
        "host",
        "delete element inet nsport addr4 { 127.0.0.1 . tcp . 4001 }",
    );
    lab.nsport_ok(&["add", "--netns", &ns1, "192.0.2.1:4003:3000"]);
    assert_eq!(localnet(), "1", "the add cannot know (control)");
    let output = lab.nsport(&["ls"]);
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("put back net.ipv4.conf.br0.route_localnet"),
        "{stderr}"
    );
    assert_eq!(localnet(), "0");
    // Put back once: the record no longer has it, and the next ls says nothing.
    let output = lab.nsport(&["ls"]);
    assert!(output.stderr.is_empty(), "{output:?}");
    // A 127.0.0.1 mapping again turns it on again.
    lab.nsport_ok(&["add", "--netns", &ns1, "127.0.0.1:4001:3000"]);
    assert_eq!(localnet(), "1");
}

/// `ls` takes the writer lock for the settings nsport recorded only: a route_localnet an
/// administrator set (kube-proxy sets `all`) neither queues it behind a writer holding
/// the lock nor is put back.
#[test]
fn an_administrators_route_localnet_takes_no_lock_and_stays() {
    let lab = Lab::new(BrNetfilter::Off);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "192.0.2.1:4002:3000"]);
    lab.write_sysctl("host", "net/ipv4/conf/all/route_localnet", "1");
    let lock = record_files(&lab.state_dir())
        .into_iter()
        .find(|path| path.extension().is_some_and(|e| e == "lock"))
        .expect("the writer lock's file");
    // Another nsport holds the lock far longer than `ls` is given.
    let mut holder = std::process::Command::new("flock")
        .arg(&lock)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let state = format!("NSPORT_STATE_DIR={}", lab.state_dir().display());
    let output = std::process::Command::new("timeout")
        .args(["10", "ip", "netns", "exec", &lab.ns("host"), "env", &state])
        .args([env!("CARGO_BIN_EXE_nsport"), "ls"])
        .output()
        .unwrap();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(
        output.status.success(),
        "ls waited for the lock: {output:?}"
    );
    assert!(output.stderr.is_empty(), "{output:?}");
    assert_eq!(
        lab.read_sysctl("host", "net/ipv4/conf/all/route_localnet"),
        "1"
    );
}

/// A removal killed between putting hairpin mode back and saving the record leaves the
/// mode off while the record still says nsport keeps it on (an `add` killed between
/// saving its entry and setting the mode leaves the same). An `add` that read the port as
/// on while it waited for the writer lock must read it again, not trust the record. Made
/// here without a kill: the test holds the lock while the `add` waits, and turns the mode
/// off as that removal did.
#[test]
fn an_add_that_waited_reads_hairpin_mode_again_whatever_the_record_says() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "8000"]);
    assert_eq!(lab.hairpin_mode("v1"), "hairpin on");
    let output = lab.nsport_waiting_on_lock(&["add", "--netns", &ns1, "8001"], || {
        lab.ip("host", "link set v1 type bridge_slave hairpin off");
    });
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        lab.hairpin_mode("v1"),
        "hairpin on",
        "8001 published: {}",
        lab.nsport_ok(&["ls"])
    );
}

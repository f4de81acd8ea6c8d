//! Hostile names at every entry point (issue 11, "Must hold" 1 and 5): namespace names
//! given to `add --netns`, `apply` and the library, CNI container IDs, interface names and
//! network names, and interface names given to `--via`. Each name either round-trips
//! exactly — `ls --json` shows it (or its `#PREFIX~HEX16` digest when it is too long for an
//! element comment), `export --nft` and `nft list ruleset` load into another namespace,
//! `prune` keeps the mapping while its namespace lives, and `rm --netns` / DEL / `apply`
//! remove exactly that mapping — or it is refused clearly (exit 2 and one stderr line
//! naming it; CNI error JSON with code 4 for the environment, 7 or 2 for the
//! configuration) and the kernel is unchanged: the lab host's ruleset, its route_localnet
//! sysctls and its forwarding sysctls.
//!
//! Each test runs a fixed list of nasty names, then generated ones: `PROPTEST_CASES`
//! generated cases per entry point (24 by default). Every namespace and interface a case
//! makes, whatever its name, is deleted by a drop guard, even on panic; the tests in this
//! file run one at a time because hostile namespace names are global (/run/netns).
mod lab;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use lab::{BrNetfilter, CNI_PLUGINS, Lab, TempFile, sh};
use nsport::ruleset::metadata;
use nsport::{PublishOptions, Target};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

/// Hostile namespace names are global: one test of this file at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A value as Rust quotes it, cut to a readable length (names run to 4,096 bytes).
fn short(value: &impl std::fmt::Debug) -> String {
    short_text(&format!("{value:?}"))
}

fn short_text(text: &str) -> String {
    const MAX: usize = 1500;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}… ({} bytes)", &text[..at], text.len()),
        None => text.to_string(),
    }
}

/// Generated cases per entry point: `PROPTEST_CASES`, 24 by default.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(24)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        // A case costs a namespace and a dozen processes: shrink, but not for ever.
        max_shrink_iters: 32,
        ..Config::default()
    })
}

/// Runs the fixed names, then generated ones, through `case`, each with its own slot
/// (which numbers its port, veth and address).
fn run<S: Strategy>(
    fixed: Vec<S::Value>,
    strategy: S,
    reset: impl Fn(),
    case: impl Fn(&S::Value, u32) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let slot = std::cell::Cell::new(0);
    // A failed case may leave its mapping: the next starts from the bystanders alone.
    let case = |value: &S::Value, slot: u32| {
        let result = case(value, slot);
        if result.is_err() {
            reset();
        }
        result
    };
    let next = || {
        slot.set(slot.get() + 1);
        slot.get()
    };
    // Every fixed case runs, and the generated ones after them, whatever fails: the report
    // lists all failures.
    let mut failures: Vec<String> = fixed
        .iter()
        .filter_map(|value| {
            let result = case(value, next());
            result.err().map(|error| {
                format!(
                    "fixed case {}: {}",
                    short(value),
                    short_text(&error.to_string())
                )
            })
        })
        .collect();
    let started = std::time::Instant::now();
    if let Err(error) = runner().run(&strategy, |value| case(&value, next())) {
        failures.push(short_text(&format!("generated: {error}")));
    }
    eprintln!(
        "{} fixed cases, {} generated ({} runs with shrinking); the generated ones took {:.1?}",
        fixed.len(),
        cases(),
        slot.get() as usize - fixed.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Names

fn hostile_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range('a', 'z'),
        4 => proptest::sample::select(vec![
            ' ', '"', '\'', '=', '/', '%', '#', '~', '\\', '\t', '\n', '\r', '\x01', '\x0b',
            '\x1b', '\x7f', ':', '.', '-', '{', '}', ';', '$', '`', '*', '@', ',', '+', '0',
        ]),
        1 => proptest::sample::select(vec!['é', 'ü', '€', '中', '😀', '\u{a0}', '\u{202e}']),
        1 => any::<char>(),
    ]
}

/// 1 to 4,096 bytes of hostile characters; most short enough to be a namespace.
fn hostile_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => vec(hostile_char(), 1..24),
        3 => vec(hostile_char(), 24..100),
        1 => vec(hostile_char(), 100..300),
        1 => vec(hostile_char(), 1000..4097),
    ]
    .prop_map(|chars| {
        let mut name = String::new();
        for c in chars {
            if name.len() + c.len_utf8() > 4096 {
                break;
            }
            name.push(c);
        }
        name
    })
}

/// The nasty namespace names every run tries.
fn fixed_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "d direct=allow",
        "a\"b",
        "a'b",
        "x/y",
        "#abc~0123456789abcdef",
        "#",
        "tab\there",
        "new\nline",
        "é",
        "=",
        "%41",
        "%",
        "~",
        "\\",
        " ",
        "-x",
        "via=br0 netns=x ino=1",
        "\x1b[31mred",
        ".",
        "..",
        "/",
        "nul\0byte",
    ]
    .map(String::from)
    .to_vec();
    names.push("n".repeat(64));
    names.push("n".repeat(65));
    names.push("é".repeat(32));
    names.push("n".repeat(255));
    names.push("n".repeat(256));
    names.push("n".repeat(4096));
    names.push(format!("x/{}", "n".repeat(300)));
    names
}

/// Whether Linux would accept `name` as an interface name (`dev_valid_name`): 1 to 15
/// bytes, not `.` or `..`, no `/`, `:` or byte the kernel's `isspace` takes as space
/// (`\t \n \v \f \r`, space, and 0xA0).
fn linux_accepts_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| matches!(b, b'/' | b':' | b'\0' | b' ' | 0x09..=0x0d | 0xa0))
}

/// The CNI spec's form of container IDs and network names.
fn is_spec_name(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether a value read back from a comment stands for `name`: itself, or its digest
/// (a CNI comment shrinks names to digests until it fits).
fn stands_for(recorded: &str, name: &str) -> bool {
    recorded == name || recorded == metadata::digest(name)
}

/// What `ls --json` must show for a name: itself, or its digest when too long to record.
fn recorded(name: &str) -> String {
    if metadata::encode(name).len() > 64 {
        metadata::digest(name)
    } else {
        name.to_string()
    }
}

// ---------------------------------------------------------------------------------------
// The lab: guards, snapshots, runs

/// A namespace with a hostile name: deleted on drop, its host-side veth first (so that
/// the next case's snapshot does not see it go).
struct HostileNetns<'a> {
    lab: &'a Lab,
    name: String,
    veth: Option<String>,
}

impl HostileNetns<'_> {
    fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }
}

impl Drop for HostileNetns<'_> {
    fn drop(&mut self) {
        if let Some(veth) = &self.veth {
            let _ = Command::new("ip")
                .args(["-n", &self.lab.ns("host"), "link", "del", veth])
                .output();
        }
        let _ = Command::new("ip")
            .args([OsStr::new("netns"), OsStr::new("del")])
            .arg(&self.name)
            .output();
        // `ip netns del` of a name it would not take: unmount and remove it by path.
        let path = self.path();
        if path.exists() {
            let _ = Command::new("umount").arg(&path).output();
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(OsStr::from_bytes(name.as_bytes()))
}

/// Makes namespace `name` with `ip netns add` when it takes the name; when it does, wires
/// it to the lab's bridge as veth `vh{slot}` with address 172.18.0.{10+slot}, like ns1.
/// `None` when the name cannot be a namespace (`/`, NUL, too long, `.`).
fn hostile_netns<'a>(lab: &'a Lab, name: &str, slot: u32) -> Option<HostileNetns<'a>> {
    // Not a file name under /run/netns (and never a path this test may remove).
    if name.is_empty()
        || name.len() > 255
        || name.contains(['\0', '/'])
        || name == "."
        || name == ".."
    {
        return None;
    }
    let path = netns_path(name);
    // Another run's guard may still be deleting the same name: wait for it, boundedly.
    for _ in 0..300 {
        if !path.exists() && !path.is_symlink() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!path.exists(), "{path:?} exists and is not this test's");
    let made = Command::new("ip")
        .args([OsStr::new("netns"), OsStr::new("add")])
        .arg(name)
        .output()
        .expect("ip netns add");
    if !made.status.success() {
        return None;
    }
    let mut guard = HostileNetns {
        lab,
        name: name.to_string(),
        veth: None,
    };
    assert!(path.exists(), "ip netns add {name:?} made no {path:?}");
    let veth = format!("vh{slot}");
    let path_text = path.to_str().expect("a UTF-8 path").to_string();
    let host = lab.ns("host");
    sh(&[
        "ip", "-n", &host, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
        &path_text,
    ]);
    guard.veth = Some(veth.clone());
    in_netns(&path, &["ip", "link", "set", "lo", "up"]);
    let addr = format!("172.18.0.{}/24", 10 + slot % 200);
    in_netns(&path, &["ip", "addr", "add", &addr, "dev", "eth0"]);
    in_netns(&path, &["ip", "link", "set", "eth0", "up"]);
    lab.ip("host", &format!("link set {veth} master br0"));
    lab.ip("host", &format!("link set {veth} up"));
    Some(guard)
}

/// Runs a command inside the namespace at `path` (any name: no `ip -n` parsing).
fn in_netns(path: &Path, args: &[&str]) {
    let file = std::fs::File::open(path).expect("namespace file");
    let output = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                Command::new(args[0])
                    .args(&args[1..])
                    .output()
                    .expect("run")
            })
            .join()
            .expect("no panic")
    });
    assert!(
        output.status.success(),
        "{args:?} in {path:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An interface made in the lab host for `--via`, deleted on drop.
struct HostileLink<'a> {
    lab: &'a Lab,
    name: String,
}

impl Drop for HostileLink<'_> {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([OsStr::new("-n"), OsStr::new(&self.lab.ns("host"))])
            .args([OsStr::new("link"), OsStr::new("del"), OsStr::new("dev")])
            .arg(&self.name)
            .output();
    }
}

/// Makes an interface `name` (a bridge: this kernel has no dummy driver) in the lab host
/// when `ip` takes the name.
fn hostile_link<'a>(lab: &'a Lab, name: &str) -> Option<HostileLink<'a>> {
    if name.contains('\0') || name.is_empty() {
        return None;
    }
    let made = Command::new("ip")
        .args(["-n", &lab.ns("host"), "link", "add", "name"])
        .arg(name)
        .args(["type", "bridge"])
        .output()
        .expect("ip link add");
    made.status.success().then(|| HostileLink {
        lab,
        name: name.to_string(),
    })
}

/// Whether interface `name` exists in the lab host.
fn link_exists(lab: &Lab, name: &str) -> bool {
    !name.contains('\0')
        && Command::new("ip")
            .args(["-n", &lab.ns("host"), "link", "show", "dev"])
            .arg(name)
            .output()
            .expect("ip link show")
            .status
            .success()
}

/// What a refused input must leave alone: the lab host's ruleset (without counter values),
/// every route_localnet and the forwarding sysctls.
fn kernel_state(lab: &Lab) -> String {
    let mut state = lab.ruleset();
    state.push_str(&lab.run_in("host", || {
        let mut sysctls = Vec::new();
        for entry in std::fs::read_dir("/proc/sys/net/ipv4/conf")
            .unwrap()
            .flatten()
        {
            let value =
                std::fs::read_to_string(entry.path().join("route_localnet")).unwrap_or_default();
            sysctls.push(format!(
                "route_localnet {}={}",
                entry.file_name().to_string_lossy(),
                value.trim()
            ));
        }
        for key in ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"] {
            let value = std::fs::read_to_string(format!("/proc/sys/{key}")).unwrap_or_default();
            sysctls.push(format!("{key}={}", value.trim()));
        }
        sysctls.sort();
        sysctls.join("\n")
    }));
    state
}

/// The kernel state is `expected`; otherwise the lines that differ.
fn same_state(lab: &Lab, expected: &str, what: &str) -> Result<(), TestCaseError> {
    let now = kernel_state(lab);
    if now == expected {
        return Ok(());
    }
    let (old, new): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), now.lines().collect());
    let gone: Vec<&&str> = old.iter().filter(|line| !new.contains(line)).collect();
    let came: Vec<&&str> = new.iter().filter(|line| !old.contains(line)).collect();
    Err(TestCaseError::fail(format!(
        "{what}\n  lines gone: {gone:#?}\n  lines new: {came:#?}"
    )))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs nsport in the lab host with OS-string arguments (names may be anything).
fn nsport(lab: &Lab, args: &[&OsStr]) -> Output {
    lab.nsport_command(&[])
        .args(args)
        .output()
        .expect("run nsport")
}

fn os(text: &str) -> &OsStr {
    OsStr::new(text)
}

/// `ls --json`, parsed.
fn ls(lab: &Lab) -> Vec<Value> {
    let output = lab.nsport_ok(&["ls", "--json"]);
    serde_json::from_str::<Value>(&output)
        .expect("ls --json is JSON")
        .as_array()
        .expect("an array")
        .clone()
}

fn on_port(rows: &[Value], port: u16) -> Vec<Value> {
    rows.iter()
        .filter(|row| row["host_port"] == port)
        .cloned()
        .collect()
}

/// A refusal: exit 2 and one stderr line, `nsport: …`, naming `name` (as Rust quotes it),
/// as README's "Errors and exit codes" says: naming the bad value.
fn check_refusal(output: &Output, name: &str, what: &str) -> Result<(), TestCaseError> {
    let stderr = text(&output.stderr);
    prop_assert_eq!(
        output.status.code(),
        Some(2),
        "{}: want exit 2; stdout {:?} stderr {:?}",
        what,
        text(&output.stdout),
        stderr
    );
    prop_assert!(
        stderr.starts_with("nsport: ") && stderr.ends_with('\n') && stderr.lines().count() == 1,
        "{}: want one stderr line, got {:?}",
        what,
        stderr
    );
    prop_assert!(
        stderr.contains(&format!("{name:?}")),
        "{}: stderr does not name {:?}: {:?}",
        what,
        name,
        stderr
    );
    Ok(())
}

/// `export --nft` and `nft list ruleset` of the lab host load with `nft -f` in another
/// namespace, and the element comments read back the same there.
fn check_nft_loads(lab: &Lab, script: &str, what: &str) -> Result<(), TestCaseError> {
    let check = lab.ns("check");
    let file = TempFile(std::env::temp_dir().join(format!("{check}.nft")));
    let listing = lab.nft("host", "list ruleset");
    for (label, content) in [("export --nft", script), ("nft list ruleset", &listing)] {
        std::fs::write(&file.0, content).unwrap();
        sh(&["ip", "netns", "exec", &check, "nft", "flush", "ruleset"]);
        let loaded = Command::new("ip")
            .args(["netns", "exec", &check, "nft", "-f"])
            .arg(&file.0)
            .output()
            .unwrap();
        prop_assert!(
            loaded.status.success(),
            "{}: {} does not load with nft -f: {}\n{}",
            what,
            label,
            text(&loaded.stderr),
            content
        );
        let back = lab.nft("check", "list table inet nsport");
        let host = lab.nft("host", "list table inet nsport");
        prop_assert_eq!(
            comments(&back),
            comments(&host),
            "{}: comments after {} | nft -f",
            what,
            label
        );
    }
    Ok(())
}

fn comments(listing: &str) -> Vec<String> {
    let mut found: Vec<String> = listing
        .split("comment \"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap_or_default().to_string())
        .collect();
    found.sort();
    found
}

/// The human `ls`: a header and one line per mapping, whatever the names hold.
fn check_human_ls(lab: &Lab, what: &str) -> Result<(), TestCaseError> {
    let rows = ls(lab).len();
    let human = lab.nsport_ok(&["ls"]);
    prop_assert_eq!(
        human.lines().count(),
        rows + 1,
        "{}: `nsport ls` prints one line per mapping:\n{}",
        what,
        human
    );
    Ok(())
}

/// A lab with a bystander mapping (`add --netns ns1 3000:80`) that every case must leave
/// alone, and an empty namespace `check` to load scripts into.
fn lab_with_bystander() -> Lab {
    let mut lab = Lab::new(BrNetfilter::Off);
    lab.add_namespace("check");
    add_bystanders(&lab);
    lab
}

/// The bystanders: `add --netns ns1 3000:80`, and a CNI attachment on 3001.
fn add_bystanders(lab: &Lab) {
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000:80"]);
    let (add, _) = cni_run(lab, "ADD", &bystander(), 3001);
    assert!(add.status.success(), "bystander ADD: {}", text(&add.stdout));
}

fn bystander() -> Attachment {
    ("bystander".into(), "eth0".into(), "labnet".into())
}

/// Back to the bystanders alone, after a failed case.
fn reset(lab: &Lab) {
    lab.nsport_ok(&["flush"]);
    add_bystanders(lab);
}

// ---------------------------------------------------------------------------------------
// 1. `nsport add --netns NAME`

fn cli_case(lab: &Lab, name: &str, slot: u32) -> Result<(), TestCaseError> {
    let port = 20000 + (slot % 20000) as u16;
    let publish = port.to_string() + ":80";
    let netns_arg = format!("--netns={name}");
    if name.contains('\0') {
        // No command line can hold a NUL: `apply` and the library test these.
        return Ok(());
    }
    let namespace = hostile_netns(lab, name, slot);
    let before = kernel_state(lab);
    let add = nsport(lab, &[os("add"), os(&netns_arg), os(&publish)]);
    if namespace.is_none() || name.starts_with('#') {
        check_refusal(&add, name, "add --netns")?;
        same_state(lab, &before, "add --netns refused but changed the kernel")?;
        if namespace.is_none() {
            // Nothing to remove: `rm --netns` of a name that cannot exist is refused too.
            let rm = nsport(lab, &[os("rm"), os(&netns_arg)]);
            check_refusal(&rm, name, "rm --netns")?;
            same_state(lab, &before, "rm --netns refused but changed the kernel")?;
        }
        return Ok(());
    }
    prop_assert!(
        add.status.success(),
        "add --netns {:?} failed: {}",
        name,
        text(&add.stderr)
    );
    let rows = on_port(&ls(lab), port);
    prop_assert!(
        !rows.is_empty(),
        "ls --json has no mapping on port {}",
        port
    );
    for row in &rows {
        prop_assert_eq!(
            row["netns"].as_str(),
            Some(&*recorded(name)),
            "ls --json netns"
        );
        prop_assert_eq!(&row["stale"], &json!(false), "stale right after add");
        prop_assert_eq!(&row["allow_direct"], &json!(false));
    }
    // README: "one aligned row per mapping". A name holding a newline must not add a row
    // (nor any other control byte reach the terminal raw).
    check_human_ls(lab, "add --netns")?;
    let script = lab.nsport_ok(&["export", "--nft"]);
    check_nft_loads(lab, &script, "add --netns")?;
    // export, then apply what it wrote: nothing changes. (A name recorded as its digest
    // must not come back as a `to` entry, which allows direct access and drops the record.)
    let published = kernel_state(lab);
    let exported = TempFile(lab.state_dir().with_extension(format!("{slot}.json")));
    std::fs::write(&exported.0, lab.nsport_ok(&["export"])).unwrap();
    let apply = nsport(lab, &[os("apply"), exported.0.as_os_str()]);
    prop_assert!(
        apply.status.success(),
        "apply of export: {}",
        text(&apply.stderr)
    );
    let file = std::fs::read_to_string(&exported.0).unwrap();
    same_state(
        lab,
        &published,
        &format!("applying what export wrote changed the kernel; the file:\n{file}"),
    )?;
    // prune leaves a live namespace's mapping.
    lab.nsport_ok(&["prune"]);
    prop_assert_eq!(
        on_port(&ls(lab), port).len(),
        rows.len(),
        "prune deleted a live mapping"
    );
    // rm --netns removes exactly it.
    let rm = nsport(lab, &[os("rm"), os(&netns_arg)]);
    prop_assert!(rm.status.success(), "rm --netns: {}", text(&rm.stderr));
    same_state(
        lab,
        &before,
        "rm --netns did not remove exactly the mapping",
    )?;
    drop(namespace);
    Ok(())
}

#[test]
fn cli_add_netns_names_round_trip_or_are_refused() {
    let _serial = serial();
    let lab = lab_with_bystander();
    run(
        fixed_names(),
        hostile_name(),
        || reset(&lab),
        |name, slot| cli_case(&lab, name, slot),
    );
    // A name that is not UTF-8 cannot be recorded: refused, and nothing changes.
    let before = kernel_state(&lab);
    let output = nsport(
        &lab,
        &[
            os("add"),
            OsStr::from_bytes(b"--netns=\xff\xfe"),
            os("3999"),
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert_eq!(kernel_state(&lab), before);
}

// ---------------------------------------------------------------------------------------
// 2. `nsport apply FILE`

fn apply_case(lab: &Lab, name: &str, slot: u32) -> Result<(), TestCaseError> {
    let port = 20000 + (slot % 20000) as u16;
    // The CNI bystander is the plugin's: apply leaves it alone.
    let bystander = json!({"netns": lab.ns("ns1"), "publish": "3000:80/tcp"});
    let file = TempFile(lab.state_dir().with_extension(format!("{slot}.json")));
    let write = |entries: Vec<Value>| {
        let text = json!({"version": 1, "mappings": entries}).to_string();
        std::fs::write(&file.0, text).unwrap();
    };
    let namespace = hostile_netns(lab, name, slot);
    let before = kernel_state(lab);
    write(vec![
        bystander.clone(),
        json!({"netns": name, "publish": format!("{port}:80/tcp")}),
    ]);
    let apply = nsport(lab, &[os("apply"), file.0.as_os_str()]);
    if namespace.is_none() || name.starts_with('#') {
        check_refusal(&apply, name, "apply")?;
        same_state(lab, &before, "apply refused but changed the kernel")?;
        return Ok(());
    }
    prop_assert!(apply.status.success(), "apply: {}", text(&apply.stderr));
    let rows = on_port(&ls(lab), port);
    prop_assert!(!rows.is_empty(), "apply published nothing on {}", port);
    for row in &rows {
        prop_assert_eq!(
            row["netns"].as_str(),
            Some(&*recorded(name)),
            "ls --json netns"
        );
    }
    let script = lab.nsport_ok(&["export", "--nft"]);
    check_nft_loads(lab, &script, "apply")?;
    // The same file again changes nothing; prune keeps the live mapping.
    let published = kernel_state(lab);
    let again = nsport(lab, &[os("apply"), file.0.as_os_str()]);
    prop_assert!(
        again.status.success(),
        "apply again: {}",
        text(&again.stderr)
    );
    lab.nsport_ok(&["prune"]);
    same_state(lab, &published, "apply again or prune changed the kernel")?;
    // A file without it removes exactly it.
    write(vec![bystander]);
    let apply = nsport(lab, &[os("apply"), file.0.as_os_str()]);
    prop_assert!(
        apply.status.success(),
        "apply without it: {}",
        text(&apply.stderr)
    );
    same_state(lab, &before, "apply did not remove exactly the mapping")?;
    drop(namespace);
    Ok(())
}

#[test]
fn apply_netns_names_round_trip_or_are_refused() {
    let _serial = serial();
    let lab = lab_with_bystander();
    run(
        fixed_names(),
        hostile_name(),
        || reset(&lab),
        |name, slot| apply_case(&lab, name, slot),
    );
}

// ---------------------------------------------------------------------------------------
// 3. The library

fn library_case(lab: &Lab, name: &str, slot: u32) -> Result<(), TestCaseError> {
    let port = 20000 + (slot % 20000) as u16;
    let namespace = hostile_netns(lab, name, slot);
    let before = kernel_state(lab);
    let target = Target::Netns(name.to_string());
    let spec = format!("{port}:80").parse().unwrap();
    let published = lab.run_in("host", || {
        nsport::publish(&target, &PublishOptions::default(), &[spec])
    });
    if namespace.is_none() || name.starts_with('#') {
        let error = match published {
            Ok(mappings) => {
                return Err(TestCaseError::fail(format!(
                    "publish of {name:?} succeeded: {mappings:?}"
                )));
            }
            Err(error) => error,
        };
        prop_assert!(
            error.is_usage(),
            "publish {:?}: not a usage error: {:?}",
            name,
            error
        );
        prop_assert!(
            error.to_string().contains(&format!("{name:?}")),
            "{}",
            error
        );
        same_state(lab, &before, "publish refused but changed the kernel")?;
        return Ok(());
    }
    prop_assert!(
        published.is_ok(),
        "publish {:?}: {:?}",
        name,
        published.err()
    );
    let listed = lab.run_in("host", nsport::list).expect("list");
    let ours: Vec<_> = listed.iter().filter(|m| m.host_port == port).collect();
    prop_assert!(!ours.is_empty());
    for mapping in &ours {
        prop_assert_eq!(mapping.netns.as_deref(), Some(&*recorded(name)));
    }
    let script = lab.run_in("host", nsport::export_nft).expect("export_nft");
    check_nft_loads(lab, &script, "library")?;
    let published = kernel_state(lab);
    let (pruned, _) = lab.run_in("host", || nsport::prune(false)).expect("prune");
    prop_assert!(pruned.is_empty(), "prune deleted {:?}", pruned);
    same_state(lab, &published, "prune changed the kernel")?;
    lab.run_in("host", || nsport::unpublish_netns(name, false))
        .expect("unpublish_netns");
    same_state(lab, &before, "unpublish_netns did not remove exactly it")?;
    drop(namespace);
    Ok(())
}

#[test]
fn library_netns_names_round_trip_or_are_refused() {
    let _serial = serial();
    let lab = lab_with_bystander();
    // Library calls in this process keep their records in the lab's state directory, as
    // the nsport processes do. SAFETY: the tests of this file run one at a time, and this
    // one starts no thread that reads the environment meanwhile.
    unsafe { std::env::set_var("NSPORT_STATE_DIR", lab.state_dir()) };
    run(
        fixed_names(),
        hostile_name(),
        || reset(&lab),
        |name, slot| library_case(&lab, name, slot),
    );
}

// ---------------------------------------------------------------------------------------
// 4. The CNI plugin

/// One CNI attachment: container ID, interface, network name.
type Attachment = (String, String, String);

fn cni_run(
    lab: &Lab,
    command: &str,
    (id, ifname, network): &Attachment,
    port: u16,
) -> (Output, Option<Value>) {
    let netns = format!("/run/netns/{}", lab.ns("ns1"));
    let config = json!({
        "cniVersion": "1.0.0",
        "name": network,
        "type": "nsport",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": ifname, "sandbox": netns}],
            "ips": [{"address": "172.18.0.2/24", "interface": 0}],
        },
    });
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("host"),
            env!("CARGO_BIN_EXE_nsport"),
        ])
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", ifname)
        .env("CNI_NETNS", &netns)
        .env("CNI_PATH", CNI_PLUGINS)
        .env("NSPORT_STATE_DIR", lab.state_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nsport as a CNI plugin");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let json = serde_json::from_slice(&output.stdout).ok();
    (output, json)
}

fn cni_case(lab: &Lab, attachment: &Attachment, slot: u32) -> Result<(), TestCaseError> {
    let (id, ifname, network) = attachment;
    let port = 20000 + (slot % 20000) as u16;
    let before = kernel_state(lab);
    // Refused for certain: an ID or network name not in the spec's form, an interface name
    // Linux would refuse. Refused or not: an interface name Linux takes that README's table
    // forbids (`"`, `\`, control bytes).
    let env_bad = !is_spec_name(id) || !linux_accepts_ifname(ifname);
    let env_maybe = ifname
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || b.is_ascii_control());
    let config_bad = !is_spec_name(network);
    let (add, result) = cni_run(lab, "ADD", attachment, port);
    let accepted = add.status.success();
    if env_bad || config_bad || (env_maybe && !accepted) {
        let mut codes = Vec::new();
        if env_bad || env_maybe {
            codes.push(4);
        }
        if config_bad {
            codes.extend([2, 7]);
        }
        let code = result.as_ref().and_then(|r| r["code"].as_u64());
        prop_assert!(
            !accepted && code.is_some_and(|c| codes.contains(&c)),
            "ADD {:?}: want a CNI error with code {:?}; exit {:?} stdout {:?} stderr {:?}",
            attachment,
            codes,
            add.status.code(),
            text(&add.stdout),
            text(&add.stderr)
        );
        prop_assert!(result.as_ref().is_some_and(|r| r["msg"].is_string()));
        same_state(lab, &before, "ADD refused but changed the kernel")?;
        // DEL of what was refused (it must not fail for a missing attachment) removes
        // nothing: the bystanders stay.
        let (_del, _) = cni_run(lab, "DEL", attachment, port);
        same_state(lab, &before, "DEL of a refused ADD changed the kernel")?;
        return Ok(());
    }
    prop_assert!(
        accepted,
        "ADD {:?} refused: {}",
        attachment,
        text(&add.stdout)
    );
    let rows = on_port(&ls(lab), port);
    prop_assert!(
        !rows.is_empty(),
        "ADD published nothing: {}",
        text(&add.stdout)
    );
    for row in &rows {
        for (field, name) in [
            ("container", id),
            ("container_ifname", ifname),
            ("network", network),
        ] {
            let value = row[field].as_str().unwrap_or_default();
            prop_assert!(
                stands_for(value, name),
                "ls --json {}: {:?} for {:?}",
                field,
                value,
                name
            );
        }
    }
    check_human_ls(lab, "CNI ADD")?;
    let script = lab.nsport_ok(&["export", "--nft"]);
    check_nft_loads(lab, &script, "CNI ADD")?;
    let (check, _) = cni_run(lab, "CHECK", attachment, port);
    prop_assert!(check.status.success(), "CHECK: {}", text(&check.stdout));
    let (del, _) = cni_run(lab, "DEL", attachment, port);
    prop_assert!(del.status.success(), "DEL: {}", text(&del.stdout));
    same_state(lab, &before, "DEL did not remove exactly its mappings")?;
    Ok(())
}

fn valid_cni_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9][a-z0-9_.-]{0,40}",
        1 => "[a-f0-9]{64}",
        1 => "[a-zA-Z0-9][a-zA-Z0-9_.-]{100,1000}",
    ]
}

/// Environment values cannot hold NUL.
fn env_safe(name: String) -> String {
    name.replace('\0', "0")
}

fn cni_field(valid: BoxedStrategy<String>) -> impl Strategy<Value = String> {
    prop_oneof![1 => valid, 1 => hostile_name().prop_map(env_safe)]
}

fn fixed_attachments() -> Vec<Attachment> {
    let ok = |s: &str| s.to_string();
    let mut list = vec![
        (ok("ctr1"), ok("eth0"), ok("labnet")),
        ("a".repeat(1000), ok("eth0"), ok("labnet")),
        ("a".repeat(1000), "n".repeat(15), "n".repeat(300)),
        (ok("id with space"), ok("eth0"), ok("labnet")),
        (ok("x/y"), ok("eth0"), ok("labnet")),
        (ok("#abc~0123456789abcdef"), ok("eth0"), ok("labnet")),
        (ok("d direct=allow"), ok("eth0"), ok("labnet")),
        (ok("-ctr"), ok("eth0"), ok("labnet")),
        (ok("ctr2"), ok("eth0:1"), ok("labnet")),
        (ok("ctr2"), ok("a/b"), ok("labnet")),
        (ok("ctr2"), ok("tab\there"), ok("labnet")),
        (ok("ctr2"), ok("eth\x0b0"), ok("labnet")),
        (ok("ctr2"), ok("eth\u{a0}"), ok("labnet")),
        (ok("ctr2"), ok("a\"b"), ok("labnet")),
        (ok("ctr2"), ok("a\\b"), ok("labnet")),
        (ok("ctr2"), ok("ctl\x01"), ok("labnet")),
        (ok("ctr2"), "n".repeat(16), ok("labnet")),
        (ok("ctr2"), ok("."), ok("labnet")),
        (ok("ctr3"), ok("eth0"), ok("net/x")),
        (ok("ctr3"), ok("eth0"), ok("net x")),
        (ok("ctr3"), ok("eth0"), ok("é")),
        (ok("ctr3"), ok("eth0"), ok("nul\0byte")),
        (ok("ctr3"), ok("eth0"), ok("#abc~0123456789abcdef")),
    ];
    list.push((ok("ctr4"), ok("eth0"), "n".repeat(4096)));
    list
}

#[test]
fn cni_names_round_trip_or_are_refused() {
    let _serial = serial();
    let lab = lab_with_bystander();
    let ifname = prop_oneof![3 => "eth[0-9]{1,2}", 1 => "[a-z][a-z0-9_.-]{0,14}"];
    let strategy = (
        cni_field(valid_cni_name().boxed()),
        cni_field(ifname.boxed()),
        prop_oneof![1 => valid_cni_name(), 1 => hostile_name()],
    );
    run(
        fixed_attachments(),
        strategy,
        || reset(&lab),
        |attachment, slot| cni_case(&lab, attachment, slot),
    );
}

// ---------------------------------------------------------------------------------------
// 5. Interface names via `--via`

fn via_case(lab: &Lab, name: &str, slot: u32) -> Result<(), TestCaseError> {
    if name.contains('\0') {
        return Ok(());
    }
    let port = 20000 + (slot % 20000) as u16;
    let publish = format!("{port}:80");
    let made = hostile_link(lab, name);
    let exists = made.is_some() || link_exists(lab, name);
    let before = kernel_state(lab);
    let via_arg = format!("--via={name}");
    let netns_arg = format!("--netns={}", lab.ns("ns1"));
    let add = nsport(
        lab,
        &[os("add"), os(&netns_arg), os(&via_arg), os(&publish)],
    );
    if !exists || !linux_accepts_ifname(name) || !add.status.success() {
        prop_assert!(
            exists || !add.status.success(),
            "--via {:?}: no such interface, but add succeeded",
            name
        );
        check_refusal(&add, name, "add --via")?;
        same_state(lab, &before, "add --via refused but changed the kernel")?;
        drop(made);
        return Ok(());
    }
    let rows = on_port(&ls(lab), port);
    prop_assert!(!rows.is_empty());
    for row in &rows {
        prop_assert_eq!(row["via"].as_str(), Some(name), "ls --json via");
    }
    check_human_ls(lab, "add --via")?;
    let script = lab.nsport_ok(&["export", "--nft"]);
    check_nft_loads(lab, &script, "add --via")?;
    let rm = nsport(lab, &[os("rm"), os(&port.to_string())]);
    prop_assert!(rm.status.success(), "rm: {}", text(&rm.stderr));
    same_state(lab, &before, "rm did not remove exactly the mapping")?;
    drop(made);
    Ok(())
}

fn fixed_ifnames() -> Vec<String> {
    [
        "br0",
        "all",
        "default",
        "lo",
        "a\"b",
        "a\\b",
        "a'b",
        "x/y",
        "eth0:1",
        "tab\there",
        "new\nline",
        "a b",
        "ctl\x01",
        "eth\x0b0",
        "é",
        "\u{a0}",
        ".",
        "..",
        "-x",
        "#x",
        "d=allow",
        "%41",
    ]
    .map(String::from)
    .into_iter()
    .chain(["n".repeat(15), "n".repeat(16), "n".repeat(4096)])
    .collect()
}

#[test]
fn via_interface_names_are_refused_unless_linux_takes_them_and_they_exist() {
    let _serial = serial();
    let lab = lab_with_bystander();
    let names = prop_oneof![
        3 => vec(hostile_char(), 1..17).prop_map(String::from_iter),
        1 => hostile_name(),
    ];
    run(
        fixed_ifnames(),
        names,
        || reset(&lab),
        |name, slot| via_case(&lab, name, slot),
    );
}

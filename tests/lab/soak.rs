//! Many nsport writers at once on one lab, as container runtimes and scripts run them: CLI
//! `add`, `rm`, `rm --netns`, `apply`, `flush`, `ls` and CNI ADD/DEL on overlapping
//! targets (four namespaces behind br0, one behind v3, three CNI containers behind cni0)
//! and a small pool of host ports every writer shares. Used by the concurrency soak and
//! the SIGKILL soak; both end with `finish`, which runs the invariant checker.
//!
//! What a writer may see: exit 0; exit 1 with a conflict or "try again" message (another
//! writer holds the port, or the ruleset kept changing); exit 2 from `rm` of a port that
//! is not published. Anything else (another exit code, a signal nobody sent, a panic,
//! ENOENT / "No such file") is a violation.

use super::invariants;
use super::{BrNetfilter, HOST_OUT, Lab, NS3, Server};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long each soak's writers run: `NSPORT_SOAK_SECS`, 30 by default. This is the
/// length of the workload, not a limit on how fast anything must be.
pub fn soak_secs() -> u64 {
    std::env::var("NSPORT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

/// How many writer processes run at once: 8, the figure. `NSPORT_SOAK_WRITERS`
/// changes it for control runs only (one writer: what is left is not a race).
pub fn writers() -> usize {
    std::env::var("NSPORT_SOAK_WRITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

/// The host ports the writers share: few, so that they collide often.
pub const POOL: std::ops::Range<u16> = 4000..4008;

/// A host port no writer uses: the final command publishes it.
pub const FINAL_PORT: u16 = 4999;

/// The CLI-published namespaces; each runs a TCP server on 3000 and a UDP one on 53.
pub const NAMESPACES: [&str; 3] = ["ns1", "ns2", "ns4"];
/// Their ports on br0.
pub const BRIDGE_PORTS: [(&str, &str); 3] = [("v1", "ns1"), ("v2", "ns2"), ("v4", "ns4")];

/// The CNI containers (container ID, role).
pub const CONTAINERS: [(&str, &str); 3] = [("c1", "ctr1"), ("c2", "ctr2"), ("c3", "ctr3")];

/// A small deterministic generator (xorshift64*): no dependency, and a failing run can be
/// repeated from the seed it prints.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A seed from the clock, printed by the caller so that a run can be repeated with
/// `NSPORT_SOAK_SEED`.
pub fn seed() -> u64 {
    std::env::var("NSPORT_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// A lab set up for soaking: namespaces and containers with servers, a saved file for
/// `apply`.
pub struct SoakLab {
    pub lab: Lab,
    /// The bridge plugin's result of each container, its `prevResult`.
    pub prev: BTreeMap<String, Value>,
    pub saved: PathBuf,
    _servers: Vec<Server>,
}

impl Drop for SoakLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.saved);
    }
}

/// The kinds of command the writers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Add,
    Rm,
    RmNetns,
    Apply,
    Flush,
    Ls,
    CniAdd,
    CniDel,
}

impl SoakLab {
    pub fn new(br_netfilter: BrNetfilter) -> SoakLab {
        let mut lab = Lab::new(br_netfilter);
        // A third namespace behind br0: several targets share the bridge and its port set.
        lab.bridge_namespace("ns4", "v4", Ipv4Addr::new(172, 18, 0, 4));
        let mut prev = BTreeMap::new();
        for (container, role) in CONTAINERS {
            lab.add_namespace(role);
            let result = lab.cni_attach(container, &lab.ns(role));
            prev.insert(container.to_string(), result);
        }
        let mut servers = Vec::new();
        let roles = NAMESPACES
            .iter()
            .chain(&["ns3"])
            .copied()
            .chain(CONTAINERS.iter().map(|(_, role)| *role));
        for role in roles {
            servers.push(lab.serve_tcp(role, Ipv4Addr::UNSPECIFIED, 3000));
            servers.push(lab.serve_udp(role, Ipv4Addr::UNSPECIFIED, 53));
        }
        // The file `apply` makes true: saved from a real listing, as a user would.
        lab.nsport_ok(&[
            "add",
            "--netns",
            &lab.ns("ns1"),
            "4000:3000",
            "127.0.0.1:4001:3000",
        ]);
        lab.nsport_ok(&["add", "--to", &NS3.to_string(), "4002:53/udp"]);
        lab.nsport_ok(&["add", "--netns", &lab.ns("ns4"), "192.0.2.1:4003:3000"]);
        let saved = std::env::temp_dir().join(format!("{}-saved.json", lab.ns("soak")));
        std::fs::write(&saved, lab.nsport_ok(&["export"])).unwrap();
        lab.nsport_ok(&["flush"]);
        assert!(invariants::Table::read(&lab).is_none(), "flush after setup");
        SoakLab {
            lab,
            prev,
            saved,
            _servers: servers,
        }
    }

    /// The nsport CNI configuration for `container` asking for `mappings`.
    pub fn cni_config(&self, container: &str, mappings: Value) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "labnet",
            "type": "nsport",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": mappings},
            "prevResult": self.prev[container],
        })
    }

    /// A random host-side spec from the shared pool: every address form and both protocols.
    fn host_spec(rng: &mut Rng) -> (String, String) {
        let port = POOL.start + rng.below(POOL.len() as u64) as u16;
        match rng.below(5) {
            0 => (format!("{port}:53/udp"), format!("{port}/udp")),
            1 => (
                format!("127.0.0.1:{port}:3000"),
                format!("127.0.0.1:{port}"),
            ),
            2 => (
                format!("{HOST_OUT}:{port}:3000"),
                format!("{HOST_OUT}:{port}"),
            ),
            _ => (format!("{port}:3000"), port.to_string()),
        }
    }

    /// Starts one random command.
    pub fn spawn_random(&self, rng: &mut Rng) -> (Kind, String, Child) {
        let lab = &self.lab;
        let roll = rng.below(100);
        let (kind, args): (Kind, Vec<String>) = match roll {
            0..25 => {
                let role = rng.pick(&NAMESPACES);
                let mut args = vec!["add".into(), "--netns".into(), lab.ns(role)];
                // Some publish on out's interface only (127.0.0.1 never arrives there).
                let on = rng.below(4) == 0;
                if on {
                    args.extend(["--on".into(), "vo".into()]);
                }
                for _ in 0..=rng.below(2) {
                    // The same spec twice would be refused as bad input, not a race.
                    let spec = Self::host_spec(rng).0;
                    let refused_on = on && spec.starts_with("127.");
                    if !refused_on && !args.contains(&spec) {
                        args.push(spec);
                    }
                }
                if args.len() == 5 && on {
                    args.push(format!("{}:3000", POOL.start));
                }
                (Kind::Add, args)
            }
            25..33 => (
                Kind::Add,
                vec![
                    "add".into(),
                    "--to".into(),
                    NS3.to_string(),
                    Self::host_spec(rng).0,
                ],
            ),
            33..53 => {
                let mut args = vec!["rm".into()];
                if rng.below(4) == 0 {
                    args.extend(["--on".into(), "vo".into()]);
                }
                args.push(Self::host_spec(rng).1);
                (Kind::Rm, args)
            }
            53..61 => {
                let role = rng.pick(&NAMESPACES);
                (
                    Kind::RmNetns,
                    vec!["rm".into(), "--netns".into(), lab.ns(role)],
                )
            }
            61..67 => (
                Kind::Apply,
                vec!["apply".into(), self.saved.display().to_string()],
            ),
            67..70 => (Kind::Flush, vec!["flush".into()]),
            70..75 => (Kind::Ls, vec!["ls".into(), "--json".into()]),
            _ => {
                let (container, role) = *rng.pick(&CONTAINERS);
                let (kind, command) = if roll < 90 {
                    (Kind::CniAdd, "ADD")
                } else {
                    (Kind::CniDel, "DEL")
                };
                let mut mappings = Vec::new();
                for _ in 0..=rng.below(2) {
                    let port = POOL.start + rng.below(POOL.len() as u64) as u16;
                    let mapping = match rng.below(3) {
                        0 => json!({"hostPort": port, "containerPort": 53, "protocol": "udp"}),
                        1 => json!({"hostPort": port, "containerPort": 3000,
                                    "protocol": "tcp", "hostIP": "127.0.0.1"}),
                        _ => json!({"hostPort": port, "containerPort": 3000, "protocol": "tcp"}),
                    };
                    if !mappings.contains(&mapping) {
                        mappings.push(mapping);
                    }
                }
                let config = self.cni_config(container, Value::Array(mappings));
                let child = lab.cni_spawn(
                    env!("CARGO_BIN_EXE_nsport"),
                    command,
                    container,
                    &lab.ns(role),
                    &config,
                );
                let label = format!("CNI {command} {container} {}", config["runtimeConfig"]);
                return (kind, label, child);
            }
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = lab.nsport_command(&args).spawn().expect("start nsport");
        (kind, lab.normalize(&args.join(" ")), child)
    }
}

/// Whether `text` is a conflict with another writer (a host port taken, or one it
/// overlaps, which one command asking for both meets too) or a bounded retry that gave
/// up: the failures concurrency may cause.
pub fn is_conflict(text: &str) -> bool {
    let text = text.to_lowercase();
    ["already published", "conflict", "overlaps", "try again"]
        .iter()
        .any(|needle| text.contains(needle))
}

/// A violation, if the outcome of a command is not one a concurrent writer may see.
/// `killed` is true when the soak sent SIGKILL itself.
pub fn judge(kind: Kind, label: &str, output: &Output, killed: bool) -> Option<String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said = format!("{}{}", stderr.trim(), stdout.trim());
    let bad = |why: &str| {
        Some(format!(
            "`{label}`: {why} (exit {:?}): {}",
            output.status.code(),
            said.chars().take(400).collect::<String>()
        ))
    };
    if said.contains("panicked") {
        return bad("panic");
    }
    for needle in ["No such file", "ENOENT", "os error 2)"] {
        if said.contains(needle) {
            return bad("ENOENT");
        }
    }
    let Some(code) = output.status.code() else {
        return if killed {
            None
        } else {
            bad("killed by a signal")
        };
    };
    let cni = matches!(kind, Kind::CniAdd | Kind::CniDel);
    match code {
        0 => None,
        1 if cni => {
            // The CNI spec's error codes: 100 is nsport's port conflict, 11 "try again".
            let error: Option<Value> = serde_json::from_str(stdout.trim()).ok();
            let code = error.as_ref().and_then(|e| e["code"].as_u64());
            match code {
                Some(100 | 11) => None,
                _ => bad("CNI failure that is not a conflict"),
            }
        }
        // A listing conflicts with nothing; it may only give up retrying a repair.
        1 if kind == Kind::Ls && stderr.to_lowercase().contains("try again") => None,
        1 if kind != Kind::Ls && is_conflict(&stderr) => None,
        2 if kind == Kind::Rm && stderr.contains("is not published") => None,
        _ => bad("unexpected failure"),
    }
}

/// What the writers did.
#[derive(Debug, Default)]
pub struct Stats {
    pub commands: usize,
    pub killed: usize,
    /// Per kind of command, per exit code ("signal" for a kill).
    pub outcomes: BTreeMap<String, usize>,
    pub violations: Vec<String>,
}

/// Runs `writers()` writer threads for `secs` seconds, each starting one command after the
/// other; with `kill`, each command is sent SIGKILL 0–20 ms after it started (when it has
/// not ended by then).
pub fn run_writers(soak: &SoakLab, secs: u64, kill: bool, seed: u64) -> Stats {
    let stats = Mutex::new(Stats::default());
    let deadline = Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|scope| {
        for writer in 0..writers() as u64 {
            let stats = &stats;
            scope.spawn(move || {
                let mut rng = Rng::new(seed ^ (writer + 1));
                while Instant::now() < deadline {
                    let (kind, label, mut child) = soak.spawn_random(&mut rng);
                    let mut killed = false;
                    if kill {
                        std::thread::sleep(Duration::from_micros(rng.below(20_000)));
                        if child.try_wait().unwrap().is_none() {
                            // std's kill is SIGKILL; `ip netns exec` has exec'd nsport (or
                            // is killed before it does, which is one more crash point).
                            child.kill().unwrap();
                            killed = true;
                        }
                    }
                    let output = child.wait_with_output().unwrap();
                    let killed = killed && output.status.code().is_none();
                    let verdict = judge(kind, &label, &output, killed);
                    let mut stats = stats.lock().unwrap();
                    stats.commands += 1;
                    stats.killed += usize::from(killed);
                    let code = match output.status.code() {
                        Some(code) => code.to_string(),
                        None => "signal".into(),
                    };
                    *stats
                        .outcomes
                        .entry(format!("{kind:?} exit {code}"))
                        .or_default() += 1;
                    stats.violations.extend(verdict);
                }
            });
        }
    });
    stats.into_inner().unwrap()
}

/// After the writers stopped. With `quiescent`, the state the writers left must already
/// satisfy (a) to (d): the last commit was planned from what the others committed, so
/// nothing is left for a later command to repair (not so after SIGKILL, where only the
/// next command can repair). Then one more command (a publish of a port nobody used, then
/// a listing) must succeed, and then every invariant must hold and the host's loopback
/// services must be out of a neighbour's reach.
pub fn finish(soak: &SoakLab, quiescent: bool) -> Vec<String> {
    let lab = &soak.lab;
    let mut violations = Vec::new();
    if quiescent {
        violations.extend(
            invariants::check_state(lab)
                .into_iter()
                .chain(invariants::check_hairpin(lab, &BRIDGE_PORTS))
                .map(|v| format!("at quiescence: {v}")),
        );
    }
    let spec = format!("{FINAL_PORT}:3000");
    let output = lab.nsport(&["add", "--netns", &lab.ns("ns1"), &spec]);
    if !output.status.success() {
        violations.push(format!(
            "the final add failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let output = lab.nsport(&["ls", "--json"]);
    if output.status.success() {
        let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
        let listed = listed.as_array().map_or(0, Vec::len);
        let in_kernel = invariants::Table::read(lab).map_or(0, |t| t.mappings.len());
        if listed != in_kernel {
            violations.push(format!(
                "ls lists {listed} mappings, the kernel holds {in_kernel}"
            ));
        }
    } else {
        violations.push(format!(
            "the final ls failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    violations.extend(
        invariants::check(lab)
            .into_iter()
            .map(|v| format!("after the final command: {v}")),
    );
    if lab.neighbour_reads_host_loopback() {
        violations.push("ns2 reads a service bound to the host's 127.0.0.1".into());
    }
    if !violations.is_empty() {
        // What the checker saw, for the closing note and for debugging.
        let table = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns("host"),
                "nft",
                "list",
                "table",
                "inet",
                "nsport",
            ])
            .output()
            .unwrap();
        println!(
            "end state: route_localnet {:?}\n{}",
            invariants::route_localnet(lab),
            lab.normalize(&String::from_utf8_lossy(&table.stdout))
        );
    }
    violations
}

/// The writers' violations grouped by command kind and reason, with one example each:
/// a soak may see the same failure hundreds of times.
pub fn grouped(violations: &[String]) -> Vec<String> {
    let mut groups: BTreeMap<String, (usize, &String)> = BTreeMap::new();
    for v in violations {
        // "`rm 4001`: ENOENT (exit …": the command's first word and the reason.
        let command = v
            .trim_start_matches('`')
            .split([' ', '`'])
            .next()
            .unwrap_or("");
        let reason = v.split("`: ").nth(1).and_then(|r| r.split(" (").next());
        let key = format!("{command}: {}", reason.unwrap_or(v));
        groups.entry(key).or_insert((0, v)).0 += 1;
    }
    groups
        .into_iter()
        .map(|(key, (count, example))| format!("{count}× {key}, e.g. {example}"))
        .collect()
}

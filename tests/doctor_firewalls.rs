//! Issue 13 item 5: `doctor` recognises firewalld, ufw and Docker by what they leave in the
//! kernel, says whether published ports get through them, and gives the fix. Each planted
//! ruleset is shaped as the firewall writes it (firewalld's nftables backend, ufw's
//! ufw-init and before.rules through iptables-nft, Docker's chains), each verdict is checked
//! against real traffic from outside, and each fix is applied as the rules it stands for.

mod lab;

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use lab::*;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

/// A check of `doctor --json`, by name and (for checks that come once per table) by a word
/// of its detail.
#[derive(Debug)]
struct Check {
    ok: bool,
    detail: String,
    fix: String,
}

/// Every check of `doctor --json`; asserts the exit code agrees with them.
fn doctor(lab: &Lab) -> Vec<(String, Check)> {
    let output = lab.nsport(&["doctor", "--json"]);
    let checks = json(&String::from_utf8_lossy(&output.stdout));
    let checks: Vec<(String, Check)> = checks
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_string(),
                Check {
                    ok: c["ok"].as_bool().unwrap(),
                    detail: c["detail"].as_str().unwrap().to_string(),
                    fix: c["fix"].as_str().unwrap_or_default().to_string(),
                },
            )
        })
        .collect();
    let all_ok = checks.iter().all(|(_, c)| c.ok);
    assert_eq!(output.status.success(), all_ok, "{checks:#?}");
    assert_eq!(output.status.code(), Some(if all_ok { 0 } else { 1 }));
    checks
}

/// The one check named `name` whose detail contains `about`.
fn check<'a>(checks: &'a [(String, Check)], name: &str, about: &str) -> &'a Check {
    let found: Vec<&Check> = checks
        .iter()
        .filter(|(n, c)| n == name && c.detail.contains(about))
        .map(|(_, c)| c)
        .collect();
    assert_eq!(found.len(), 1, "{name} about {about:?} in {checks:#?}");
    found[0]
}

/// Runs `tool` (nft -f -, iptables-nft-restore -n, …) in the lab's host namespace with
/// `input` on stdin.
fn load(lab: &Lab, tool: &[&str], input: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("host")])
        .args(tool)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the firewall tool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{tool:?}: {}\n{input}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The README shows `doctor`'s failure for firewalld and ufw: each line `doctor` prints
/// for `name` (the FAIL line and its fix) is in the README as printed.
fn readme_shows(lab: &Lab, name: &str) {
    const README: &str = include_str!("../README.md");
    let text = String::from_utf8(lab.nsport(&["doctor"]).stdout).unwrap();
    let mut lines = text
        .lines()
        .skip_while(|line| !line.starts_with(&format!("FAIL {name}:")));
    let (fail, fix) = (lines.next().unwrap(), lines.next().unwrap());
    assert!(fix.trim_start().starts_with("fix: "), "{text}");
    for line in [fail, fix] {
        assert!(README.contains(line), "the README does not show:\n{line}");
    }
}

fn reaches(lab: &Lab, addr: impl Into<IpAddr>) -> bool {
    lab.tcp("out", addr, 3000).is_some()
}

/// `table inet firewalld` as firewalld's nftables backend builds it (build_default_rules
/// and _build_default_rules_dnat in src/firewall/core/nftables.py), with one zone that
/// allows port 3000 on input (`firewall-cmd --add-port=3000/tcp`). `strict` is
/// StrictForwardPorts.
fn firewalld(strict: bool) -> String {
    let (dnat_chain, dnat_rule) = if strict {
        (
            "chain filter_FORWARD_dnat {\n reject with icmpx admin-prohibited\n }",
            "ct status dnat jump filter_FORWARD_dnat",
        )
    } else {
        ("", "ct status dnat accept")
    };
    format!(
        "table inet firewalld {{
  chain filter_INPUT {{
    type filter hook input priority filter + 10; policy accept;
    ct state established,related accept
    ct status dnat accept
    iifname \"lo\" accept
    ct state invalid drop
    jump filter_INPUT_dispatch
    reject with icmpx admin-prohibited
  }}
  chain filter_INPUT_dispatch {{
    iifname \"vo\" goto filter_IN_public
  }}
  chain filter_IN_public {{
    tcp dport 3000 accept
    reject with icmpx admin-prohibited
  }}
  {dnat_chain}
  chain filter_FORWARD {{
    type filter hook forward priority filter + 10; policy accept;
    ct state established,related accept
    {dnat_rule}
    iifname \"lo\" accept
    ct state invalid drop
    jump filter_FORWARD_dispatch
    reject with icmpx admin-prohibited
  }}
  chain filter_FORWARD_dispatch {{
    iifname \"vo\" goto filter_FWD_public
  }}
  chain filter_FWD_public {{
    reject with icmpx admin-prohibited
  }}
}}
"
    )
}

/// firewalld's StrictForwardPorts, both ways: doctor's verdict is what traffic from outside
/// meets, the input rule that allows 3000/tcp does not help forwarded traffic, and the fix
/// (what firewalld's reload writes with StrictForwardPorts=no) lets traffic through. Panic
/// mode is recognised too.
#[test]
fn firewalld_strict_forward_ports_is_judged_by_what_the_kernel_holds() {
    let lab = Lab::new(BrNetfilter::Off);
    let _server = lab.serve_tcp("ns1", ANY, 3000);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    assert!(reaches(&lab, HOST_OUT));

    load(&lab, &["nft", "-f", "-"], &firewalld(false));
    let checks = doctor(&lab);
    let found = check(&checks, "firewalld", "table inet firewalld");
    assert!(found.ok, "{found:?}");
    assert!(
        found.detail.contains("StrictForwardPorts is off"),
        "{found:?}"
    );
    assert!(reaches(&lab, HOST_OUT), "StrictForwardPorts=no lets it in");

    lab.nft("host", "delete table inet firewalld");
    load(&lab, &["nft", "-f", "-"], &firewalld(true));
    let checks = doctor(&lab);
    let found = check(&checks, "firewalld", "table inet firewalld");
    assert!(!found.ok, "{found:?}");
    assert!(
        found.detail.contains("StrictForwardPorts is on")
            && found
                .detail
                .contains("3000/tcp is unreachable from outside"),
        "{found:?}"
    );
    assert_eq!(
        found.fix,
        "set StrictForwardPorts=no in /etc/firewalld/firewalld.conf, then firewall-cmd --reload \
         (sed -i 's/^ *StrictForwardPorts *=.*/StrictForwardPorts=no/' /etc/firewalld/firewalld.conf \
         && firewall-cmd --reload)"
    );
    // The fix's command edits firewalld.conf as firewalld reads it (keys and values
    // stripped of spaces), here on a copy.
    let conf = std::env::temp_dir().join(format!("{}-firewalld.conf", lab.ns("host")));
    std::fs::write(
        &conf,
        "# StrictForwardPorts\n# Defaults to \"no\".\nStrictForwardPorts = yes\nNftablesFlowtable=off\n",
    )
    .unwrap();
    let sed = found.fix.split(" (").nth(1).unwrap();
    let sed = sed.split(" && ").next().unwrap();
    let sed = sed.replace("/etc/firewalld/firewalld.conf", &conf.to_string_lossy());
    sh(&["sh", "-c", &sed]);
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "# StrictForwardPorts\n# Defaults to \"no\".\nStrictForwardPorts=no\nNftablesFlowtable=off\n"
    );
    std::fs::remove_file(&conf).unwrap();
    assert!(
        !reaches(&lab, HOST_OUT),
        "StrictForwardPorts=yes rejects it, whatever filter_INPUT allows"
    );
    readme_shows(&lab, "firewalld");
    // The other tables' check stays quiet: firewalld's chain is firewalld's finding.
    assert!(check(&checks, "other firewalls", "").ok);

    // The fix: firewalld reloads with StrictForwardPorts=no, rewriting its table.
    lab.nft("host", "delete table inet firewalld");
    load(&lab, &["nft", "-f", "-"], &firewalld(false));
    assert!(reaches(&lab, HOST_OUT));
    assert!(doctor(&lab).iter().all(|(_, c)| c.ok));

    // Panic mode (build_set_policy_rules("PANIC")): everything is dropped.
    load(
        &lab,
        &["nft", "-f", "-"],
        "table inet firewalld_policy_drop {
  chain raw_prerouting { type filter hook prerouting priority raw + 9; policy drop; }
  chain raw_output { type filter hook output priority raw + 9; policy drop; }
}
",
    );
    let checks = doctor(&lab);
    let found = check(&checks, "firewalld", "panic mode");
    assert!(
        !found.ok && found.fix == "firewall-cmd --panic-off",
        "{found:?}"
    );
    assert!(!reaches(&lab, HOST_OUT));
    lab.nft("host", "delete table inet firewalld_policy_drop");
    assert!(reaches(&lab, HOST_OUT));
}

/// ufw's chains as ufw-init builds them (ufw-init-functions, before.rules), for iptables
/// (`ufw`) or ip6tables (`ufw6`): FORWARD jumps through ufw's forward chains, ufw-user-
/// forward holds `ufw route` rules; `ufw allow 3000/tcp` is an input rule. The FORWARD
/// policy is DEFAULT_FORWARD_POLICY; with ACCEPT, ufw-track-forward accepts new TCP and UDP
/// connections.
fn ufw(prefix: &str, forward_policy: &str) -> String {
    let icmp = if prefix == "ufw6" {
        "-p ipv6-icmp --icmpv6-type destination-unreachable"
    } else {
        "-p icmp --icmp-type destination-unreachable"
    };
    let track = if forward_policy == "ACCEPT" {
        format!(
            "-A {prefix}-track-forward -p tcp -m conntrack --ctstate NEW -j ACCEPT\n\
             -A {prefix}-track-forward -p udp -m conntrack --ctstate NEW -j ACCEPT\n"
        )
    } else {
        String::new()
    };
    let mut rules = String::from("*filter\n:INPUT DROP [0:0]\n");
    rules.push_str(&format!(
        ":FORWARD {forward_policy} [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    ));
    for chain in [
        "before-logging-input",
        "before-input",
        "after-input",
        "reject-input",
        "track-input",
        "before-logging-forward",
        "before-forward",
        "after-forward",
        "after-logging-forward",
        "reject-forward",
        "track-forward",
        "user-input",
        "user-forward",
        "skip-to-policy-forward",
    ] {
        rules.push_str(&format!(":{prefix}-{chain} - [0:0]\n"));
    }
    for chain in [
        "before-logging-input",
        "before-input",
        "after-input",
        "reject-input",
        "track-input",
    ] {
        rules.push_str(&format!("-A INPUT -j {prefix}-{chain}\n"));
    }
    for chain in [
        "before-logging-forward",
        "before-forward",
        "after-forward",
        "after-logging-forward",
        "reject-forward",
        "track-forward",
    ] {
        rules.push_str(&format!("-A FORWARD -j {prefix}-{chain}\n"));
    }
    rules.push_str(&format!(
        "-A {prefix}-before-input -i lo -j ACCEPT
-A {prefix}-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A {prefix}-before-forward -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A {prefix}-before-forward {icmp} -j ACCEPT
-A {prefix}-before-input -j {prefix}-user-input
-A {prefix}-before-forward -j {prefix}-user-forward
-A {prefix}-user-input -p tcp --dport 3000 -j ACCEPT
{track}-A {prefix}-skip-to-policy-forward -j {forward_policy}
COMMIT
"
    ));
    rules
}

/// ufw with DEFAULT_FORWARD_POLICY="DROP", in both families: `ufw allow 3000/tcp` does
/// not let published traffic in, doctor says so per family and gives the `ufw route allow`
/// for the mapping's target; that rule (as ufw writes it into ufw-user-forward) lets IPv4
/// in, and `ufw default allow routed` (policy ACCEPT) lets IPv6 in.
#[test]
fn ufw_forward_policy_and_route_rules_are_judged_per_family() {
    let lab = Lab::dual_stack(BrNetfilter::Off);
    let _server = lab.serve_tcp("ns1", ANY, 3000);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    assert!(reaches(&lab, HOST_OUT) && reaches(&lab, v6::HOST_OUT));
    load(&lab, &["iptables-nft-restore"], &ufw("ufw", "DROP"));
    load(&lab, &["ip6tables-nft-restore"], &ufw("ufw6", "DROP"));

    let checks = doctor(&lab);
    for (table, target) in [
        ("table ip filter", "172.18.0.2"),
        ("table ip6 filter", "2001:db8:1::2"),
    ] {
        let found = check(&checks, "ufw", table);
        assert!(!found.ok, "{found:?}");
        assert!(
            found
                .detail
                .contains("ufw's default routed policy is deny (chain FORWARD policy drop) and no `ufw route allow` rule accepts the traffic")
                && found.detail.contains("unreachable from outside")
                && found.detail.contains("`ufw allow PORT` does not apply"),
            "{found:?}"
        );
        assert_eq!(
            found.fix,
            format!(
                "ufw route allow proto tcp from any to {target} port 3000; or allow all \
                 routed traffic: ufw default allow routed"
            )
        );
    }
    assert!(check(&checks, "other firewalls", "").ok);
    readme_shows(&lab, "ufw");
    assert!(!reaches(&lab, HOST_OUT), "ufw's FORWARD policy drops it");
    assert!(!reaches(&lab, v6::HOST_OUT));

    // `ufw route allow proto tcp from any to 172.18.0.2 port 3000`, as ufw writes it.
    load(
        &lab,
        &["iptables-nft-restore", "-n"],
        "*filter\n-A ufw-user-forward -p tcp -d 172.18.0.2 --dport 3000 -j ACCEPT\nCOMMIT\n",
    );
    assert!(reaches(&lab, HOST_OUT), "the route rule lets IPv4 in");
    assert!(!reaches(&lab, v6::HOST_OUT));
    let checks = doctor(&lab);
    let ipv4 = check(&checks, "ufw", "table ip filter");
    assert!(
        ipv4.ok
            && ipv4
                .detail
                .contains("route rules allow every published port"),
        "{ipv4:?}"
    );
    assert!(!check(&checks, "ufw", "table ip6 filter").ok);

    // `ufw default allow routed` for IPv6: ufw reloads with FORWARD ACCEPT.
    lab.nft("host", "delete table ip6 filter");
    load(&lab, &["ip6tables-nft-restore"], &ufw("ufw6", "ACCEPT"));
    assert!(reaches(&lab, v6::HOST_OUT), "the policy lets IPv6 in");
    let checks = doctor(&lab);
    let ipv6 = check(&checks, "ufw", "table ip6 filter");
    assert!(
        ipv6.ok && ipv6.detail.contains("default routed policy is allow"),
        "{ipv6:?}"
    );
    assert!(checks.iter().all(|(_, c)| c.ok), "{checks:#?}");
}

/// ufw's REJECT forward policy, and a `ufw route deny` for the published target: the
/// first is named as the policy, the second by the rule that rejects.
#[test]
fn ufw_reject_policy_and_deny_rules_are_named() {
    let lab = Lab::new(BrNetfilter::Off);
    let _server = lab.serve_tcp("ns1", ANY, 3000);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    let reject = ufw("ufw", "DROP").replace("COMMIT", "-A ufw-reject-forward -j REJECT\nCOMMIT");
    load(&lab, &["iptables-nft-restore"], &reject);
    let found = check(&doctor(&lab), "ufw", "table ip filter")
        .detail
        .clone();
    assert!(found.contains("default routed policy is reject"), "{found}");
    assert!(!reaches(&lab, HOST_OUT));

    lab.nft("host", "delete table ip filter");
    load(&lab, &["iptables-nft-restore"], &ufw("ufw", "ACCEPT"));
    assert!(reaches(&lab, HOST_OUT));
    assert!(check(&doctor(&lab), "ufw", "table ip filter").ok);
    // `ufw route deny proto tcp from any to 172.18.0.2 port 3000`.
    load(
        &lab,
        &["iptables-nft-restore", "-n"],
        "*filter\n-A ufw-user-forward -p tcp -d 172.18.0.2 --dport 3000 -j DROP\nCOMMIT\n",
    );
    assert!(!reaches(&lab, HOST_OUT));
    let checks = doctor(&lab);
    let found = check(&checks, "ufw", "table ip filter");
    assert!(
        !found.ok && found.detail.contains("chain ufw-user-forward"),
        "{found:?}"
    );
}

/// Docker's iptables-nft chains with the FORWARD policy drop Docker sets: doctor names
/// Docker and gives a DOCKER-USER rule for nsport's interface; that rule lets traffic in.
#[test]
fn docker_forward_policy_is_judged_and_fixed_in_docker_user() {
    let lab = Lab::new(BrNetfilter::Off);
    let _server = lab.serve_tcp("ns1", ANY, 3000);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    load(
        &lab,
        &["iptables-nft-restore"],
        "*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-FORWARD - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A DOCKER-FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER-FORWARD -o docker0 -j DOCKER
-A DOCKER-FORWARD -i docker0 -j ACCEPT
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
COMMIT
",
    );
    assert!(!reaches(&lab, HOST_OUT));
    let checks = doctor(&lab);
    let found = check(&checks, "docker", "table ip filter");
    // Docker's chains accept what comes in on docker0, which nsport cannot rule out for
    // a client: "may be", and from `out` it is not reached.
    assert!(
        !found.ok
            && found.detail.contains("at the policy of chain FORWARD")
            && found
                .detail
                .contains("3000/tcp may be unreachable from outside"),
        "{found:?}"
    );
    assert_eq!(
        found.fix,
        "iptables -I DOCKER-USER -m conntrack --ctstate DNAT -j ACCEPT"
    );
    // Accepting only what goes out to the target is not enough: its replies come back
    // through FORWARD too, and Docker's chains drop them. doctor judges both ways.
    load(
        &lab,
        &["iptables-nft-restore", "-n"],
        "*filter\n-I DOCKER-USER -o br0 -m conntrack --ctstate DNAT -j ACCEPT\nCOMMIT\n",
    );
    assert!(!reaches(&lab, HOST_OUT));
    assert!(!check(&doctor(&lab), "docker", "table ip filter").ok);
    load(
        &lab,
        &["iptables-nft-restore", "-n"],
        "*filter\n-I DOCKER-USER -m conntrack --ctstate DNAT -j ACCEPT\nCOMMIT\n",
    );
    assert!(reaches(&lab, HOST_OUT));
    let checks = doctor(&lab);
    assert!(check(&checks, "docker", "table ip filter").ok);
    assert!(checks.iter().all(|(_, c)| c.ok), "{checks:#?}");
}

/// A chain of thousands of rules is walked, and judged as the kernel judges it: first
/// with none for the published target (dropped by policy), then with one at its end.
#[test]
fn long_chains_are_walked_to_the_end() {
    let lab = Lab::new(BrNetfilter::Off);
    let _server = lab.serve_tcp("ns1", ANY, 3000);
    lab.nsport_ok(&["add", "--netns", &lab.ns("ns1"), "3000"]);
    let mut script = String::from(
        "table ip long {\n chain passage {\n type filter hook forward priority 0; policy drop;\n",
    );
    for port in 0..3000 {
        script.push_str(&format!(" tcp dport {} accept\n", 10000 + port));
    }
    script.push_str(" }\n}\n");
    load(&lab, &["nft", "-f", "-"], &script);
    assert!(!reaches(&lab, HOST_OUT));
    let checks = doctor(&lab);
    let found = check(&checks, "other firewalls", "table ip long");
    assert!(
        !found.ok && found.detail.contains("policy drop"),
        "{found:?}"
    );
    lab.nft(
        "host",
        "add rule ip long passage ct state established accept",
    );
    lab.nft(
        "host",
        "add rule ip long passage ip daddr 172.18.0.2 tcp dport 3000 accept",
    );
    assert!(reaches(&lab, HOST_OUT));
    assert!(doctor(&lab).iter().all(|(_, c)| c.ok));
}

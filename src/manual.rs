//! The manual page, nsport(1), and the shell completions: what clap generates from the
//! command definitions, plus what it cannot know (the PUBLISH grammar, examples, exit
//! status, files) and the values it cannot list (namespace names, interfaces, published
//! ports), which the scripts ask `nsport __complete KIND` for while completing.

use clap::{Arg, Command};

/// Escapes text for roff: backslashes, and a leading `.` or `'` that would start a request.
fn roff(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    text.lines()
        .map(|line| {
            if line.starts_with('.') || line.starts_with('\'') {
                format!("\\&{line}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn section(out: &mut String, title: &str) {
    out.push_str(&format!(".SH {title}\n"));
}

fn paragraph(out: &mut String, text: &str) {
    out.push_str(".PP\n");
    out.push_str(&roff(text));
    out.push('\n');
}

/// A tagged paragraph: `tag` in bold, `text` indented below it.
fn item(out: &mut String, tag: &str, text: &str) {
    out.push_str(".TP\n");
    out.push_str(&format!("\\fB{}\\fR\n", roff(tag)));
    out.push_str(&roff(text));
    out.push('\n');
}

/// Literal lines, as in a terminal.
fn example(out: &mut String, lines: &str) {
    out.push_str(".PP\n.RS 4\n.nf\n");
    out.push_str(&roff(lines));
    out.push_str("\n.fi\n.RE\n");
}

/// How an option is written: `-p, --publish PUBLISH`.
fn option_tag(arg: &Arg) -> String {
    let mut names = Vec::new();
    if let Some(short) = arg.get_short() {
        names.push(format!("-{short}"));
    }
    if let Some(long) = arg.get_long() {
        names.push(format!("--{long}"));
    }
    let mut tag = names.join(", ");
    let takes_value = arg.get_action().takes_values();
    if takes_value {
        let value = arg
            .get_value_names()
            .and_then(|names| names.first().map(|n| n.to_string()))
            .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
        if tag.is_empty() {
            tag = value;
        } else {
            tag.push(' ');
            tag.push_str(&value);
        }
    }
    tag
}

fn help_of(arg: &Arg) -> String {
    arg.get_long_help()
        .or(arg.get_help())
        .map(|help| help.to_string())
        .unwrap_or_default()
}

const PUBLISH: &str =
    "PUBLISH is Docker's -p syntax: [HOST_ADDR:][HOST_PORT[-END]]:NS_PORT[-END][/PROTO].";

const PUBLISH_FORMS: &[(&str, &str)] = &[
    (
        "3000",
        "Host port 3000 on every local address (127.0.0.1 included) to port 3000, TCP. (Docker would choose the host port; nsport publishes the same port.)",
    ),
    ("8080:80", "Host port 8080 to namespace port 80."),
    (
        "5353:53/udp",
        "UDP; the protocol is tcp, udp or sctp, in any case.",
    ),
    (
        "3868:3868/sctp",
        "SCTP, on every path TCP takes; the kernel needs SCTP conntrack and NAT, the host no SCTP sockets.",
    ),
    (
        "127.0.0.1:4000:3000",
        "Only on the host's loopback; unreachable from anywhere else.",
    ),
    (
        "192.0.2.1:4100:3000",
        "Only on that host address. 0.0.0.0 and [::] mean every address of their family.",
    ),
    (
        "[2001:db8::1]:8080:80",
        "Only on that host IPv6 address, in brackets. [::1] cannot be published: Linux cannot DNAT IPv6 loopback traffic.",
    ),
    (
        "127.0.0.1:8080, [2001:db8::1]:8080",
        "An address and one port: the same port on both sides.",
    ),
    (
        "::80, 127.0.0.1::80",
        "No host port: nsport chooses the first free port of the kernel's ephemeral range (net.ipv4.ip_local_port_range) that no host socket holds and nsport has not published, and prints the spec it published. Only add chooses; a mappings file names its ports.",
    ),
    (
        "20000-20009:30000-30009",
        "A range, port by port; both sides must be as long.",
    ),
];

const EXAMPLES: &str = "\
# publish ns1's port 3000 on every host address, and its port 80 on 127.0.0.1:8080
nsport add --netns ns1 3000 127.0.0.1:8080:80
# the same with Docker's option
nsport add --netns ns1 -p 3000 -p 127.0.0.1:8080:80
# UDP to a fixed address; a host port chosen by nsport
nsport add --to 10.77.0.2 5353:53/udp
nsport add --netns ns1 ::80
# only for traffic arriving on eth0, even before it exists or has an address
nsport add --netns ns1 --on eth0 8080:80
# what is published, what the first add would do
nsport ls
nsport add --dry-run --netns ns2 8443:443
# unpublish one port, every port of a namespace, everything
nsport rm 127.0.0.1:8080
nsport rm --netns ns1
nsport flush
# keep the mappings across reboots
nsport export > /etc/nsport/mappings.json
nsport apply /etc/nsport/mappings.json
# check the host
nsport doctor";

/// The whole page.
pub fn page(cmd: &Command) -> String {
    let version = cmd.get_version().unwrap_or_default();
    let mut out = format!(".TH NSPORT 1 \"\" \"nsport {version}\" \"User Commands\"\n");
    section(&mut out, "NAME");
    out.push_str(&format!(
        "nsport \\- {}\n",
        roff(&cmd.get_about().map(|a| a.to_string()).unwrap_or_default())
    ));
    section(&mut out, "SYNOPSIS");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let usage = sub
            .clone()
            .bin_name(format!("nsport {}", sub.get_name()))
            .render_usage();
        let usage = usage.to_string();
        let usage = usage.trim().trim_start_matches("Usage: ");
        out.push_str(&format!("\\fB{}\\fR\n.br\n", roff(usage)));
    }
    section(&mut out, "DESCRIPTION");
    paragraph(
        &mut out,
        "nsport publishes a port of a Linux network namespace (a container, an ip netns) on the host, the way docker run -p does: from outside (the client's address is kept), from the host through any of its addresses and 127.0.0.1, from the namespace itself (hairpin) and from its neighbours. It writes one nftables table, table inet nsport, over netlink, in one atomic batch per command; a published port is one map element, so the rules never grow. It never runs nft, iptables, ip or sysctl, and nothing keeps running afterwards.",
    );
    paragraph(
        &mut out,
        "Besides the table it turns on net.ipv4.ip_forward (and IPv6 forwarding for IPv6 targets), route_localnet on the interface toward a target served on 127.0.0.1 (guarded by a raw-priority chain that drops 127.0.0.0/8 from anywhere but lo), and hairpin mode on the bridge port of a namespace behind a bridge. It records what it changed and puts it back when nothing needs it.",
    );
    section(&mut out, "PUBLISH");
    paragraph(&mut out, PUBLISH);
    for (form, meaning) in PUBLISH_FORMS {
        item(&mut out, form, meaning);
    }
    section(&mut out, "COMMANDS");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        item(&mut out, &format!("nsport {}", sub.get_name()), &about);
        let args: Vec<&Arg> = sub
            .get_arguments()
            .filter(|a| {
                !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version" | "verbose")
            })
            .collect();
        if !args.is_empty() {
            out.push_str(".RS\n");
            for arg in args {
                item(&mut out, &option_tag(arg), &help_of(arg));
            }
            out.push_str(".RE\n");
        }
    }
    section(&mut out, "OPTIONS");
    item(
        &mut out,
        "-v, --verbose",
        "Log each change to stderr: every message of the netlink batch (the table, its chains, sets and rules when it is created, then each element), each sysctl and hairpin change, and the conntrack entries deleted.",
    );
    item(
        &mut out,
        "-h, --help",
        "Print help (of a command, after it).",
    );
    item(&mut out, "-V, --version", "Print the version.");
    section(&mut out, "THE MAPPINGS FILE");
    paragraph(
        &mut out,
        "export writes, and apply reads, JSON that records intent, not state: {\"version\": 1, \"mappings\": [ENTRY, ...]}. An ENTRY has \"netns\" (a name under /run/netns or a path) or \"to\" (an address), \"publish\" (one PUBLISH with its host port), and optionally \"via\" (an interface), \"on\" (the interface to publish on, as add --on), \"allow_direct\" and \"force\" (booleans, default false; force also lets an entry overlap another mapping, and wins over it) and \"allow_from\" (a list of source addresses or prefixes, like add --allow-from; absent for every source). apply resolves each namespace when it runs, as add does, so a recreated namespace or a changed address is followed; a namespace that does not exist is an error (exit 2) unless --skip-missing. apply leaves mappings made by the CNI plugin alone. The array that ls --json prints (version 0) is read too.",
    );
    section(&mut out, "SOURCE ALLOW-LISTS");
    paragraph(
        &mut out,
        "add --allow-from CIDR (repeatable; an address means /32 or /128) lets only those sources use the published ports: any other source gets what an unpublished port gives (a TCP reset, an ICMP port unreachable), not a silent drop. A list belongs to the host port (protocol and number) and every mapping of the port shares it: add refuses a mapping whose list differs from the port's, naming the mapping that holds it; re-adding the port's mappings with another list replaces it in one batch; rm of the port's last mapping removes it. The host's own non-loopback addresses and hairpin connections are sources like any other; loopback sources (127.0.0.0/8, ::1) are always allowed, since a local process can reach the target directly anyway, and 127.0.0.0/8 sources from any interface but lo are dropped. ls shows a FROM column, ls --json the field allow_from. In CNI mode, portmap's conditionsV4/conditionsV6 on source addresses (-s, --src-range, ip saddr) become the list, and on one destination address (-d, ip daddr) the host address.",
    );
    section(&mut out, "EXAMPLES");
    example(&mut out, EXAMPLES);
    section(&mut out, "EXIT STATUS");
    item(&mut out, "0", "Success (doctor: every check passed).");
    item(
        &mut out,
        "1",
        "The system refused: a conflict with an existing mapping, an overlap with one (a wildcard and a specific host address or interface on one port), a host port in use, no privilege, a kernel refusal; doctor: a check failed.",
    );
    item(
        &mut out,
        "2",
        "Bad input: a malformed command line or PUBLISH, an unknown namespace or interface, a host address that is not the host's, a port that is not published, an invalid mappings file.",
    );
    paragraph(
        &mut out,
        "A failed command changes nothing. Errors are one line on stderr, nsport: ..., naming the value at fault; a command line of the wrong shape also gets the usage.",
    );
    section(&mut out, "ENVIRONMENT");
    item(
        &mut out,
        "CNI_COMMAND",
        "When set, nsport runs as a CNI chained plugin (ADD, DEL, CHECK, VERSION, GC, STATUS) in place of portmap.",
    );
    item(
        &mut out,
        "NSPORT_STATE_DIR",
        "Where the record of changed settings is kept (default /run/nsport).",
    );
    section(&mut out, "FILES");
    item(
        &mut out,
        "/run/netns/NAME",
        "Named network namespaces (ip netns add).",
    );
    item(
        &mut out,
        "/run/nsport/",
        "The original values of the settings nsport changed, per network namespace, and the writer lock.",
    );
    item(
        &mut out,
        "/etc/nsport/mappings.json",
        "The conventional place for the mappings file that a boot-time apply reads.",
    );
    item(
        &mut out,
        "/proc/sys/net/ipv4/ip_local_port_range",
        "The range a chosen host port is taken from.",
    );
    section(&mut out, "SEE ALSO");
    out.push_str(
        "\\fBnft\\fR(8), \\fBip-netns\\fR(8), \\fBdocker-run\\fR(1), \\fBsysctl\\fR(8), \\fBbridge\\fR(8)\n",
    );
    out
}

/// What `nsport __complete KIND` can list.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Kind {
    /// Names under /run/netns.
    Netns,
    /// Interfaces of this network namespace.
    Iface,
    /// Host sides of the published mappings, as `rm` takes them.
    Published,
}

/// The candidates, one a line; nothing when they cannot be read.
pub fn candidates(kind: Kind) -> String {
    let names = |dir: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let list = match kind {
        Kind::Netns => names("/run/netns"),
        Kind::Iface => names("/sys/class/net"),
        Kind::Published => {
            let mut sides: Vec<String> = nsport::list()
                .unwrap_or_default()
                .iter()
                .map(|m| match m.host_addr {
                    Some(addr) => {
                        format!(
                            "{}/{}",
                            nsport::with_port(addr, m.host_ports_text()),
                            m.proto
                        )
                    }
                    None => format!("{}/{}", m.host_ports_text(), m.proto),
                })
                .collect();
            sides.dedup();
            sides
        }
    };
    list.into_iter().map(|name| name + "\n").collect()
}

/// clap's script for `shell`, taught to ask nsport for namespace names (after --netns),
/// interface names (after --via and --on) and published ports (the arguments of rm).
pub fn completions(shell: clap_complete::Shell, cmd: &mut Command) -> String {
    use clap_complete::Shell;
    let mut script = Vec::new();
    clap_complete::generate(shell, cmd, "nsport", &mut script);
    let script = String::from_utf8_lossy(&script).into_owned();
    match shell {
        Shell::Bash => script + BASH,
        Shell::Zsh => {
            let script = script
                .replace(":NAME|PATH:_default'", ":NAME|PATH:_nsport_netns'")
                .replace(":IFACE:_default'", ":IFACE:_nsport_ifaces'");
            // The rm arguments: published ports.
            let script = match script.find("'*::host -- ") {
                Some(at) => {
                    let end = at + script[at..].find("' \\\n").unwrap_or(0);
                    let line = &script[at..end];
                    let fixed = line.replace(":_default", ":_nsport_published");
                    format!("{}{}{}", &script[..at], fixed, &script[end..])
                }
                None => script,
            };
            script.replacen("#compdef nsport\n", &format!("#compdef nsport\n{ZSH}"), 1)
        }
        Shell::Fish => script + FISH,
        _ => script,
    }
}

const BASH: &str = r#"
# Values clap cannot know, asked of nsport itself.
_nsport_dynamic() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" kind=""
    case "$prev" in
        --netns) kind=netns ;;
        --via|--on) kind=iface ;;
        *) if [[ "${COMP_WORDS[1]}" == rm && "$cur" != -* ]]; then kind=published; fi ;;
    esac
    if [[ -n "$kind" ]]; then
        COMPREPLY=($(compgen -W "$(nsport __complete "$kind" 2>/dev/null)" -- "$cur"))
        return 0
    fi
    _nsport "$@"
}
complete -F _nsport_dynamic -o bashdefault -o default nsport
"#;

const ZSH: &str = r#"_nsport_netns() { compadd -- ${(f)"$(nsport __complete netns 2>/dev/null)"} }
_nsport_ifaces() { compadd -- ${(f)"$(nsport __complete iface 2>/dev/null)"} }
_nsport_published() { compadd -- ${(f)"$(nsport __complete published 2>/dev/null)"} }
"#;

const FISH: &str = r#"
# Values clap cannot know, asked of nsport itself.
complete -c nsport -n "__fish_nsport_using_subcommand add rm" -l netns -f -r -a "(nsport __complete netns 2>/dev/null)"
complete -c nsport -n "__fish_nsport_using_subcommand add" -l via -f -r -a "(nsport __complete iface 2>/dev/null)"
complete -c nsport -n "__fish_nsport_using_subcommand add rm" -l on -f -r -a "(nsport __complete iface 2>/dev/null)"
complete -c nsport -n "__fish_nsport_using_subcommand rm" -f -a "(nsport __complete published 2>/dev/null)"
"#;

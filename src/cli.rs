//! The command line: clap's definitions, and a parser of its own for the commonest shapes of
//! `add`, which a publish would otherwise spend a quarter of its instructions on.

use std::ffi::OsString;
use std::net::IpAddr;

use clap::{Args, Parser, Subcommand};
use nsport::{HostSpec, PublishRequest};

use crate::manual;

#[derive(Parser, Debug)]
#[command(
    name = "nsport",
    version,
    about = "Publish ports of Linux network namespaces on the host, with nftables over netlink",
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(flatten)]
    pub log: Verbosity,
    #[command(subcommand)]
    pub command: Command,
}

// `-v`, taken before the command and after it. Every command declares it rather than clap
// copying one global option into each: that copy, made even for `--version`, took 13 clones
// of it and 32 KB of heap, about 0.07 ms of every start here. (Not a doc comment: clap would
// take it for the about text of every command that flattens this.)
#[derive(Args, Debug, Default)]
pub struct Verbosity {
    /// Log each sysctl and hairpin change and each kernel exchange to stderr
    #[arg(short, long)]
    pub verbose: bool,
}

// Each subcommand's arguments are built only when it is the one parsed: building them all
// took `--version`, `rm` and `ls` about 0.13 ms and 64 KB of heap before doing anything.
#[derive(Subcommand, Debug)]
#[command(defer = true)]
pub enum Command {
    /// Publish ports: [HOST_ADDR:][HOST_PORT[-END]]:NS_PORT[-END][/PROTO]
    Add(AddArgs),
    /// Unpublish ports by their host side, or every port of a namespace
    Rm(RmCommand),
    /// List what is published, with counters and status
    Ls {
        /// Print one JSON array, with counters, status and problems (apply reads it too)
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        log: Verbosity,
    },
    /// Rebuild a table written by an older nsport in this one's layout, keeping every mapping
    ///
    /// Any change (add, rm, apply, prune, the CNI plugin) migrates an older table first, in
    /// the same batch; migrate does only that. Mapping counters start again from zero.
    Migrate {
        /// Print what would change, as nft commands, and change nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        log: Verbosity,
    },
    /// Remove everything nsport made and put back the settings it changed
    Flush {
        /// Print what would change, as nft commands, and change nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        log: Verbosity,
    },
    /// Unpublish the mappings whose namespace no longer exists
    Prune {
        /// Print what would change, as nft commands, and change nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        log: Verbosity,
    },
    /// Print the mappings as a file for `apply`: what was asked for, not counters or state
    Export {
        /// An `nft -f` script that recreates the whole table
        #[arg(long)]
        nft: bool,
        #[command(flatten)]
        log: Verbosity,
    },
    /// Make the published mappings exactly those of FILE (what `export` writes; - for stdin)
    Apply {
        /// The mappings file (see THE MAPPINGS FILE in nsport(1)); - for stdin
        file: String,
        /// Print what would change, as nft commands, and change nothing
        #[arg(long)]
        dry_run: bool,
        /// Leave out, with a warning, the entries whose namespace does not exist (yet)
        #[arg(long)]
        skip_missing: bool,
        #[command(flatten)]
        log: Verbosity,
    },
    /// Check what publishing needs and what breaks it, with the fix for each problem
    Doctor {
        /// Print the checks as one JSON array
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        log: Verbosity,
    },
    /// Print a shell completion script: nsport completions bash > /etc/bash_completion.d/nsport
    ///
    /// The scripts complete namespace names after --netns, interface names after --via and
    /// published ports after rm, by asking nsport itself while completing.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
        #[command(flatten)]
        log: Verbosity,
    },
    /// Print the manual page (roff): nsport man | man -l -
    Man {
        #[command(flatten)]
        log: Verbosity,
    },
    /// Print per-mapping packet and byte counters in the Prometheus text format
    Metrics {
        #[command(flatten)]
        log: Verbosity,
    },
    /// Print completion candidates, one a line (what the completion scripts ask)
    #[command(name = "__complete", hide = true)]
    Complete {
        #[arg(value_enum)]
        kind: manual::Kind,
        #[command(flatten)]
        log: Verbosity,
    },
}

#[derive(Args, Debug)]
#[group(id = "target", required = true, multiple = false)]
pub struct TargetArgs {
    /// The namespace: a name under /run/netns or a path such as /proc/PID/ns/net
    #[arg(long, value_name = "NAME|PATH", group = "target")]
    pub netns: Option<String>,
    /// The target address, instead of reading it from a namespace
    #[arg(long, value_name = "ADDR", group = "target")]
    pub to: Option<IpAddr>,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The host-side interface toward the target (default: found by route lookup)
    #[arg(long, value_name = "IFACE")]
    pub via: Option<String>,
    /// Let hosts that route to the target reach its unpublished ports directly
    #[arg(long)]
    pub allow_direct: bool,
    /// Publish only for traffic arriving on this interface, whatever addresses it has or
    /// will get; it need not exist yet
    #[arg(long, value_name = "IFACE")]
    pub on: Option<String>,
    /// Publish even if a host socket holds the port (it stops receiving), or another mapping
    /// overlaps it (the more specific one wins where they overlap)
    #[arg(long)]
    pub force: bool,
    /// Only this source may use the published ports: an address or a prefix, IPv4 or IPv6
    /// (may be repeated). Others get what an unpublished port gives. The list belongs to the
    /// host port: every mapping of the port shares it; re-adding changes it.
    #[arg(long, value_name = "CIDR")]
    pub allow_from: Vec<nsport::SourcePrefix>,
    /// Print what would change, as nft commands, and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// What to publish, as in `docker run -p`: 3000, 8080:80, 127.0.0.1:4000:3000, 5353:53/udp,
    /// ::80 (a free host port, printed)
    #[arg(value_name = "PUBLISH", required_unless_present = "publish_option")]
    pub publish: Vec<PublishRequest>,
    /// PUBLISH given as in `docker run`: -p 8080:80 (may be repeated)
    #[arg(
        short = 'p',
        long = "publish",
        id = "publish_option",
        value_name = "PUBLISH"
    )]
    pub publish_option: Vec<PublishRequest>,
    #[command(flatten)]
    pub log: Verbosity,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct RmArgs {
    /// Unpublish every mapping to this namespace's address
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// What to unpublish: its host side, [HOST_ADDR:]HOST_PORT[-END][/PROTO], or a whole
    /// PUBLISH, whose namespace side must then match
    #[arg(value_name = "PUBLISH")]
    pub host: Vec<HostSpec>,
}

#[derive(Args, Debug)]
pub struct RmCommand {
    #[command(flatten)]
    pub what: RmArgs,
    /// Unpublish the host ports published on this interface (with add --on)
    #[arg(long, value_name = "IFACE", conflicts_with = "netns")]
    pub on: Option<String>,
    /// Print what would change, as nft commands, and change nothing
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub log: Verbosity,
}

impl Cli {
    /// Whether `-v` was given, before the command or after it.
    pub fn verbose(&self) -> bool {
        let after = match &self.command {
            Command::Add(add) => &add.log,
            Command::Rm(rm) => &rm.log,
            Command::Ls { log, .. }
            | Command::Migrate { log, .. }
            | Command::Flush { log, .. }
            | Command::Prune { log, .. }
            | Command::Export { log, .. }
            | Command::Apply { log, .. }
            | Command::Doctor { log, .. }
            | Command::Completions { log, .. }
            | Command::Man { log }
            | Command::Metrics { log }
            | Command::Complete { log, .. } => log,
        };
        self.log.verbose || after.verbose
    }

    /// Parses `add` the way clap would when its words take the commonest shapes: long
    /// options as one word or as `--option=value`, `-p VALUE`, `-v`, and values that parse.
    ///
    /// A publish spends a quarter of its instructions, and the page faults of their code, in
    /// building and tearing down clap's tree of every command. Anything this does not know
    /// (help, `--`, a repeated option, a value that is empty, starts with `-` or does not
    /// parse, a missing target or PUBLISH, a word that is not UTF-8) returns `None` and is
    /// clap's to parse, so every error keeps clap's wording and exit code. A test checks on
    /// random command lines that whatever this returns is what clap returns.
    pub fn parse_common_add(args: impl IntoIterator<Item = OsString>) -> Option<Cli> {
        let mut words = args.into_iter().map(OsString::into_string);
        if words.next()?.ok()? != "add" {
            return None;
        }
        let mut add = AddArgs {
            target: TargetArgs {
                netns: None,
                to: None,
            },
            via: None,
            allow_direct: false,
            on: None,
            force: false,
            allow_from: Vec::new(),
            dry_run: false,
            publish: Vec::new(),
            publish_option: Vec::new(),
            log: Verbosity::default(),
        };
        while let Some(word) = words.next() {
            let word = word.ok()?;
            if !word.starts_with('-') {
                add.publish.push(word.parse().ok()?);
                continue;
            }
            let (name, attached) = match word.split_once('=') {
                Some((name, value)) if name.starts_with("--") => (name, Some(value)),
                _ => (word.as_str(), None),
            };
            let flag = match name {
                "-v" | "--verbose" => Some(&mut add.log.verbose),
                "--force" => Some(&mut add.force),
                "--allow-direct" => Some(&mut add.allow_direct),
                "--dry-run" => Some(&mut add.dry_run),
                _ => None,
            };
            if let Some(flag) = flag {
                // clap refuses a flag given twice or with a value.
                if *flag || attached.is_some() {
                    return None;
                }
                *flag = true;
                continue;
            }
            let value = match attached {
                Some(value) => value.to_owned(),
                None => words.next()?.ok()?,
            };
            if value.is_empty() || value.starts_with('-') {
                return None;
            }
            match name {
                "--netns" => set_once(&mut add.target.netns, value)?,
                "--to" => set_once(&mut add.target.to, value.parse().ok()?)?,
                "--via" => set_once(&mut add.via, value)?,
                "--on" => set_once(&mut add.on, value)?,
                "--allow-from" => add.allow_from.push(value.parse().ok()?),
                "-p" | "--publish" => add.publish_option.push(value.parse().ok()?),
                _ => return None,
            }
        }
        let one_target = add.target.netns.is_some() != add.target.to.is_some();
        let something = !add.publish.is_empty() || !add.publish_option.is_empty();
        (one_target && something).then_some(Cli {
            log: Verbosity::default(),
            command: Command::Add(add),
        })
    }
}

/// Fills an option given once; `None` (clap's to report) when it was given before.
fn set_once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// clap checks a command's definitions when it builds it, and each subcommand is built
    /// only when parsed: this builds them all, so a mistake in any fails here.
    #[test]
    fn every_command_definition_holds() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    fn words(line: &[&str]) -> Vec<OsString> {
        line.iter().map(OsString::from).collect()
    }

    /// What clap makes of the same words, in the same `Debug` form as the fast path's.
    fn by_clap(line: &[&str]) -> Result<String, clap::error::ErrorKind> {
        let argv = std::iter::once("nsport").chain(line.iter().copied());
        Cli::try_parse_from(argv)
            .map(|cli| format!("{cli:?}"))
            .map_err(|error| error.kind())
    }

    #[test]
    fn the_commonest_publishes_take_the_fast_path_and_equal_clap() {
        for line in [
            &["add", "--netns", "ns1", "3000:3000"][..],
            &["add", "--to", "10.88.0.2", "8080:80", "5353:53/udp"],
            &[
                "add",
                "--netns=ns 1",
                "-p",
                "127.0.0.1:4000:3000",
                "--publish=::80",
            ],
            &[
                "add",
                "-v",
                "--to=fd00::2",
                "[fd00::1]:8080:80",
                "--force",
                "--dry-run",
            ],
            &[
                "add",
                "--netns",
                "/proc/1/ns/net",
                "--via",
                "br0",
                "--on",
                "eth9",
                "80",
            ],
            &[
                "add",
                "--allow-from",
                "10.0.0.0/8",
                "--allow-from=fd00::/8",
                "--to",
                "10.0.0.2",
                "22",
            ],
            &[
                "add",
                "--allow-direct",
                "--netns",
                "a=b",
                "20000-20009:20000-20009",
            ],
        ] {
            let fast = Cli::parse_common_add(words(line));
            let fast = fast.unwrap_or_else(|| panic!("{line:?} went to clap"));
            assert_eq!(Ok(format!("{fast:?}")), by_clap(line), "{line:?}");
        }
    }

    #[test]
    fn what_clap_refuses_or_explains_is_left_to_clap() {
        for line in [
            &["add", "--netns", "ns1"][..],
            &["add", "3000"],
            &["add", "--netns", "ns1", "--to", "10.0.0.2", "80"],
            &["add", "--netns", "ns1", "--netns", "ns2", "80"],
            &["add", "--netns", "ns1", "--force", "--force", "80"],
            &["add", "--netns", "ns1", "--force=yes", "80"],
            &["add", "--netns", "ns1", "80:"],
            &["add", "--to", "10.0.0.300", "80"],
            &["add", "--netns", "-ns1", "80"],
            &["add", "--netns", "", "80"],
            &["add", "--netns", "ns1", "--", "80"],
            &["add", "--netns", "ns1", "80", "--help"],
            &["add", "--netns"],
            &["add", "--netns", "ns1", "--allow-from", "10.0.0.0/33", "80"],
            &["rm", "80"],
            &["-v", "add", "--netns", "ns1", "80"],
        ] {
            assert!(Cli::parse_common_add(words(line)).is_none(), "{line:?}");
        }
    }

    #[test]
    fn a_word_that_is_not_utf8_is_left_to_clap() {
        use std::os::unix::ffi::OsStringExt;
        let mut line = words(&["add", "--netns"]);
        line.push(OsString::from_vec(b"ns\xff".to_vec()));
        line.push(OsString::from("80"));
        assert!(Cli::parse_common_add(line).is_none());
    }

    /// Options that take a value, each with values it accepts.
    const OPTIONS: &[(&str, &[&str])] = &[
        ("--netns", &["ns1", "a b", "a=b", "/proc/1/ns/net"]),
        ("--to", &["10.0.0.2", "fd00::2"]),
        ("--via", &["eth0"]),
        ("--on", &["eth9"]),
        ("--allow-from", &["10.0.0.0/8", "fd00::/8", "192.0.2.1"]),
        ("-p", SPECS),
        ("--publish", SPECS),
    ];
    const SPECS: &[&str] = &[
        "80",
        "8080:80",
        "53/udp",
        "1-3:4-6",
        "127.0.0.1:4000:3000",
        "::80",
    ];
    const FLAGS: &[&str] = &["--force", "--allow-direct", "--dry-run", "-v", "--verbose"];
    /// Words clap refuses or explains, or that the fast path leaves to it.
    const ODD: &[&str] = &[
        "add",
        "rm",
        "x",
        "",
        "-",
        "--",
        "-x",
        "--help",
        "--force=1",
        "80:",
        "--bogus",
        "-pv",
        "10.0.0.300",
        "-1",
        "eth0",
        "--to",
        "--netns",
    ];

    /// A word or two: mostly an option with a value it accepts (as two words or joined by
    /// `=`), a flag or a PUBLISH; sometimes an option with another's value, or an odd word.
    fn word() -> impl Strategy<Value = Vec<String>> {
        let pair = |o: usize, v: usize, joined: bool, values: &[&str]| {
            let (option, _) = OPTIONS[o];
            let value = values[v % values.len()];
            match (joined, option.starts_with("--")) {
                (true, true) => vec![format!("{option}={value}")],
                _ => vec![option.to_string(), value.to_string()],
            }
        };
        prop_oneof![
            5 => (0..OPTIONS.len(), 0..8usize, any::<bool>())
                .prop_map(move |(o, v, joined)| pair(o, v, joined, OPTIONS[o].1)),
            2 => (0..FLAGS.len()).prop_map(|f| vec![FLAGS[f].to_string()]),
            3 => (0..SPECS.len()).prop_map(|s| vec![SPECS[s].to_string()]),
            1 => (0..OPTIONS.len(), 0..OPTIONS.len(), 0..8usize, any::<bool>())
                .prop_map(move |(o, other, v, joined)| pair(o, v, joined, OPTIONS[other].1)),
            1 => (0..ODD.len()).prop_map(|o| vec![ODD[o].to_string()]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Whatever the fast path returns, clap returns too, field for field.
        #[test]
        fn the_fast_path_agrees_with_clap(
            mut parts in proptest::collection::vec(word(), 0..7),
            target in prop_oneof![
                3 => (0..2usize, 0..4usize).prop_map(|(o, v)| {
                    let (option, values) = OPTIONS[o];
                    vec![option.to_string(), values[v % values.len()].to_string()]
                }),
                1 => Just(Vec::new()),
            ],
            at in 0..8usize,
            add_first in proptest::bool::weighted(0.9),
        ) {
            parts.insert(at.min(parts.len()), target);
            let mut line: Vec<String> = parts.concat();
            if add_first {
                line.insert(0, "add".to_string());
            }
            let line: Vec<&str> = line.iter().map(String::as_str).collect();
            if let Some(fast) = Cli::parse_common_add(words(&line)) {
                prop_assert_eq!(Ok(format!("{fast:?}")), by_clap(&line), "{:?}", line);
            }
        }
    }
}

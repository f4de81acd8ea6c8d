//! The `nsport` command: parses arguments, calls the library, prints, and maps errors to
//! exit codes (2 for bad input, 1 for everything else).

use std::io::{IsTerminal, Read, Write};
use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use nsport::{HostSpec, Listing, PublishOptions, PublishSpec, Target, with_port};

#[derive(Parser)]
#[command(
    name = "nsport",
    version,
    about = "Publish ports of Linux network namespaces on the host, with nftables over netlink"
)]
struct Cli {
    /// Log each sysctl and hairpin change and each kernel exchange to stderr
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish ports: [HOST_ADDR:]HOST_PORT[-END]:NS_PORT[-END][/PROTO]
    Add(AddArgs),
    /// Unpublish ports by their host side, or every port of a namespace
    Rm(RmCommand),
    /// List what is published, with counters and status
    Ls {
        /// Print one JSON array (the format `apply` reads)
        #[arg(long)]
        json: bool,
    },
    /// Remove everything nsport made and put back the settings it changed
    Flush {
        /// Print what would change, as nft commands, and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Unpublish the mappings whose namespace no longer exists
    Prune,
    /// Print the current mappings as a file for `apply` (or as an nft script)
    Export {
        /// An `nft -f` script that recreates the whole table
        #[arg(long)]
        nft: bool,
    },
    /// Make the published mappings exactly those of FILE (`ls --json` output; - for stdin)
    Apply {
        /// The mappings file
        file: String,
        /// Print what would change, as nft commands, and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Check what publishing needs and what breaks it, with the fix for each problem
    Doctor {
        /// Print the checks as one JSON array
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script: nsport completions bash > /etc/bash_completion.d/nsport
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): nsport man | man -l -
    Man,
    /// Print per-mapping packet and byte counters in the Prometheus text format
    Metrics,
}

#[derive(Args)]
#[group(id = "target", required = true, multiple = false)]
struct TargetArgs {
    /// The namespace: a name under /run/netns or a path such as /proc/PID/ns/net
    #[arg(long, value_name = "NAME|PATH", group = "target")]
    netns: Option<String>,
    /// The target address, instead of reading it from a namespace
    #[arg(long, value_name = "ADDR", group = "target")]
    to: Option<IpAddr>,
}

#[derive(Args)]
struct AddArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The host-side interface toward the target (default: found by route lookup)
    #[arg(long, value_name = "IFACE")]
    via: Option<String>,
    /// Let hosts that route to the target reach its unpublished ports directly
    #[arg(long)]
    allow_direct: bool,
    /// Publish even if a host socket holds the port (it stops receiving)
    #[arg(long)]
    force: bool,
    /// Print what would change, as nft commands, and change nothing
    #[arg(long)]
    dry_run: bool,
    /// What to publish, as in `docker run -p`: 3000, 8080:80, 127.0.0.1:4000:3000, 5353:53/udp
    #[arg(required = true, value_name = "PUBLISH")]
    publish: Vec<PublishSpec>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct RmArgs {
    /// Unpublish every mapping to this namespace's address
    #[arg(long, value_name = "NAME|PATH")]
    netns: Option<String>,
    /// The host side of what to unpublish: [HOST_ADDR:]HOST_PORT[-END][/PROTO]
    #[arg(value_name = "PUBLISH")]
    host: Vec<HostSpec>,
}

#[derive(Args)]
struct RmCommand {
    #[command(flatten)]
    what: RmArgs,
    /// Print what would change, as nft commands, and change nothing
    #[arg(long)]
    dry_run: bool,
}

/// The CNI plugin: the runtime sets CNI_COMMAND and gives the configuration on stdin;
/// results and errors are JSON on stdout.
fn cni_main(command: &str) -> ExitCode {
    let mut config = String::new();
    if let Err(error) = std::io::stdin().read_to_string(&mut config) {
        let error = nsport::cni::CniError {
            code: nsport::cni::code::IO_FAILURE,
            msg: "cannot read the network configuration from stdin".into(),
            details: error.to_string(),
        };
        println!("{}", error.to_json("1.1.0"));
        return ExitCode::FAILURE;
    }
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let invocation = nsport::cni::Invocation {
        command,
        env: &env,
        config: &config,
    };
    match nsport::cni::run(&invocation) {
        Ok(output) => {
            if !output.is_empty() {
                println!("{output}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("{}", error.to_json(&nsport::cni::version_of(&config)));
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    if let Ok(command) = std::env::var("CNI_COMMAND") {
        log::set_max_level(log::LevelFilter::Warn);
        let _ = log::set_logger(&StderrLogger);
        return cni_main(&command);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout with success.
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("nsport: {}", one_line(&error.render().to_string()));
            return ExitCode::from(2);
        }
    };
    log::set_max_level(if cli.verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    });
    let _ = log::set_logger(&StderrLogger);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("nsport: {err:#}");
            let usage = err
                .downcast_ref::<nsport::Error>()
                .is_some_and(nsport::Error::is_usage);
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// Folds clap's message into one line: the text before its usage hint, without the
/// `error: ` prefix, its lines joined.
fn one_line(message: &str) -> String {
    let message = message.strip_prefix("error: ").unwrap_or(message);
    let message = message
        .split("\n\nUsage:")
        .next()
        .and_then(|m| m.split("\n\nFor more information").next())
        .unwrap_or(message);
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut print = |text: String| {
        out.write_all(text.as_bytes())
            .context("cannot write to stdout")
    };
    match cli.command {
        Command::Add(args) => {
            let target = match (args.target.netns, args.target.to) {
                (Some(netns), _) => Target::Netns(netns),
                (None, Some(addr)) => Target::Addr(addr),
                (None, None) => unreachable!("clap requires one target"),
            };
            let options = PublishOptions {
                via: args.via,
                allow_direct: args.allow_direct,
                force: args.force,
            };
            if args.dry_run {
                print(nsport::publish_dry_run(&target, &options, &args.publish)?.nft())?;
            } else {
                nsport::publish(&target, &options, &args.publish)?;
            }
        }
        Command::Rm(args) => {
            let plan = match args.what.netns {
                Some(netns) => nsport::unpublish_netns(&netns, args.dry_run)?,
                None => nsport::unpublish(&args.what.host, args.dry_run)?,
            };
            if args.dry_run {
                print(plan.nft())?;
            }
        }
        Command::Ls { json } => {
            let listings = nsport::list_status()?;
            print(if json {
                to_json(&listings)?
            } else {
                table(&listings)
            })?;
        }
        Command::Flush { dry_run } => {
            let plan = nsport::flush(dry_run)?;
            if dry_run {
                print(plan.nft())?;
            }
        }
        Command::Prune => {
            for mapping in nsport::prune()? {
                log::info!("unpublished stale {}", mapping.comment());
            }
        }
        Command::Export { nft } => {
            print(if nft {
                nsport::export_nft()?
            } else {
                to_json(&nsport::list_status()?)?
            })?;
        }
        Command::Apply { file, dry_run } => {
            let text = if file == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("cannot read the mappings from stdin")?;
                text
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {file}"))?
            };
            let desired = nsport::parse_mappings(&text)?;
            // A long apply says so on a terminal; scripts and logs stay quiet.
            let long = desired.len() >= 1000 && std::io::stderr().is_terminal();
            if long && !dry_run {
                eprintln!("nsport: applying {} mappings…", desired.len());
            }
            let plan = nsport::apply(&desired, dry_run)?;
            if dry_run {
                print(plan.nft())?;
            } else if long {
                eprintln!(
                    "nsport: applied: {} elements added, {} removed",
                    plan.add.len(),
                    plan.delete.len()
                );
            }
        }
        Command::Doctor { json } => {
            let checks = nsport::doctor::run();
            print(if json {
                to_json(&checks)?
            } else {
                checks
                    .iter()
                    .map(|check| {
                        let mark = if check.ok { "ok  " } else { "FAIL" };
                        let fix = check
                            .fix
                            .as_ref()
                            .map(|fix| format!("\n      fix: {fix}"))
                            .unwrap_or_default();
                        format!("{mark} {}: {}{fix}\n", check.check, check.detail)
                    })
                    .collect()
            })?;
            if checks.iter().any(|check| !check.ok) {
                anyhow::bail!(
                    "{} of {} checks failed",
                    checks.iter().filter(|c| !c.ok).count(),
                    checks.len()
                );
            }
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "nsport", &mut script);
            print(String::from_utf8(script).context("completion script")?)?;
        }
        Command::Metrics => print(nsport::metrics::prometheus(&nsport::list_status()?))?,
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .context("cannot render the manual page")?;
            print(String::from_utf8(page).context("manual page")?)?;
        }
    }
    Ok(())
}

fn to_json(value: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

/// Warnings always, and with `-v` what nsport changes, as `nsport: ` lines on stderr.
struct StderrLogger;

impl log::Log for StderrLogger {
    /// nsport's own records only: the netlink crates log every message they send.
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level() && metadata.target().starts_with("nsport")
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                log::Level::Error | log::Level::Warn => "warning: ",
                _ => "",
            };
            eprintln!("nsport: {level}{}", record.args());
        }
    }

    fn flush(&self) {}
}

/// The human listing: one aligned row per mapping.
fn table(listings: &[Listing]) -> String {
    let header = [
        "PROTO", "HOST", "TARGET", "VIA", "NETNS", "PACKETS", "BYTES", "STATUS",
    ]
    .map(String::from);
    let rows: Vec<[String; 8]> = listings
        .iter()
        .map(|listing| {
            let m = &listing.mapping;
            let status = match (&listing.shadows, listing.stale) {
                (_, true) => "stale: namespace gone".to_string(),
                (Some(owner), false) => format!("shadows {owner}"),
                (None, false) => "ok".to_string(),
            };
            let host = match m.host_addr {
                Some(addr) => with_port(addr, m.host_port),
                // Every address of the mapping's family; IPv6 ones never include [::1].
                None if m.is_ipv6() => format!("[*]:{}", m.host_port),
                None => format!("*:{}", m.host_port),
            };
            [
                m.proto.to_string(),
                host,
                with_port(m.to_addr, m.to_port),
                m.via.clone(),
                match (&m.container, &m.netns) {
                    // Container IDs are long; twelve characters name one, as Docker shows.
                    (Some(id), _) => format!("cni:{}", &id[..id.len().min(12)]),
                    (None, Some(netns)) => netns.clone(),
                    (None, None) => "-".into(),
                },
                listing.packets.to_string(),
                listing.bytes.to_string(),
                status,
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut text = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_fold_into_one_line() {
        let message = "error: the following required arguments were not provided:\n  <PUBLISH>...\n\nUsage: nsport add <PUBLISH>...\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(message),
            "the following required arguments were not provided: <PUBLISH>..."
        );
    }
}

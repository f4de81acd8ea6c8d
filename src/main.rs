//! The `nsport` command: parses arguments, calls the library, prints, and maps errors to
//! exit codes (2 for bad input, 1 for everything else).

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use anyhow::Context;

mod cli;
mod host_ports;
mod listing;
mod manual;
use clap::{CommandFactory, Parser};
use cli::{Cli, Command};
use host_ports::choose_host_ports;
use listing::{Row, table};
use nsport::{HostSpec, PublishOptions, PublishRequest, Target, with_port};

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
    // The main thread never changes network namespace: nsport enters others on threads of
    // their own.
    nsport::netlink::pin_thread_namespace();
    if let Ok(command) = std::env::var("CNI_COMMAND") {
        log::set_max_level(log::LevelFilter::Warn);
        let _ = log::set_logger(&StderrLogger);
        return cni_main(&command);
    }
    // The commonest shapes of `add` skip building clap's command tree; anything else, and
    // every error, is clap's to parse and report.
    let parsed = match Cli::parse_common_add(std::env::args_os().skip(1)) {
        Some(cli) => Ok(cli),
        None => Cli::try_parse(),
    };
    let cli = match parsed {
        Ok(cli) => cli,
        // Help and version go to stdout with success.
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        // A bad value (a malformed PUBLISH, an address that is not one) is one line
        // naming it, like every other error about a value; a command line of the wrong
        // shape (a missing argument, an unknown option, no command at all) keeps clap's
        // usage and hint lines.
        Err(error)
            if matches!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue
            ) =>
        {
            eprintln!("nsport: {}", one_line(&error.render().to_string()));
            return ExitCode::from(2);
        }
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(2);
        }
    };
    log::set_max_level(if cli.verbose() {
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
                .is_some_and(nsport::Error::is_usage)
                || err.downcast_ref::<UsageError>().is_some();
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
                on: args.on,
                allow_from: args.allow_from,
            };
            let requests: Vec<PublishRequest> = args
                .publish
                .into_iter()
                .chain(args.publish_option)
                .collect();
            let mut avoid = Vec::new();
            // A chosen port that another command published meanwhile is chosen again.
            for attempt in 0.. {
                let (specs, chosen) = choose_host_ports(&requests, &avoid)?;
                let result = if args.dry_run {
                    nsport::publish_dry_run(&target, &options, &specs).map(|plan| {
                        let notes: String = chosen
                            .iter()
                            .map(|spec| format!("# host port chosen: {spec}\n"))
                            .collect();
                        notes + &plan.nft()
                    })
                } else {
                    nsport::publish(&target, &options, &specs)
                        .map(|_| chosen.iter().map(|spec| format!("{spec}\n")).collect())
                };
                match result {
                    Ok(text) => {
                        print(text)?;
                        break;
                    }
                    Err(nsport::Error::Conflict { .. } | nsport::Error::Overlap { .. })
                        if !chosen.is_empty() && attempt < 5 =>
                    {
                        avoid.extend(chosen.iter().flat_map(|spec| {
                            spec.host_ports.ports().map(move |port| (spec.proto, port))
                        }));
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Command::Rm(args) => {
            let plan = match args.what.netns {
                Some(netns) => nsport::unpublish_netns(&netns, args.dry_run)?,
                None => {
                    check_namespace_sides(&args.what.host, args.on.as_deref())?;
                    nsport::unpublish_on(args.on.as_deref(), &args.what.host, args.dry_run)?
                }
            };
            if args.dry_run {
                print(plan.nft())?;
            }
        }
        Command::Ls { json, .. } => {
            let listings = nsport::list_status()?;
            let mappings: Vec<nsport::Mapping> =
                listings.iter().map(|l| l.mapping.clone()).collect();
            let problems = nsport::doctor::path_problems(&mappings)?;
            // A table of another layout is listed as far as it can be read, and marked.
            let layout_note = nsport::table_layout()?.and_then(|layout| layout.note());
            if let Some(note) = &layout_note {
                eprintln!("nsport: warning: {note}");
            }
            print(if json {
                let rows: Vec<Row> = listings
                    .iter()
                    .zip(&problems)
                    .map(|(listing, problem)| Row {
                        listing,
                        family: if listing.mapping.is_ipv6() {
                            "ipv6"
                        } else {
                            "ipv4"
                        },
                        problem: problem.as_ref(),
                    })
                    .collect();
                to_json(&rows)?
            } else {
                let mut text = table(&listings, &problems);
                if let Some(note) = &layout_note {
                    text.push_str(&format!("note: {note}\n"));
                }
                text
            })?;
        }
        Command::Migrate { dry_run, .. } => {
            let plan = nsport::migrate(dry_run)?;
            if dry_run {
                print(plan.nft())?;
            }
        }
        Command::Flush { dry_run, .. } => {
            let plan = nsport::flush(dry_run)?;
            if dry_run {
                print(plan.nft())?;
            }
        }
        Command::Prune { dry_run, .. } => {
            let (pruned, plan) = nsport::prune(dry_run)?;
            if dry_run {
                print(plan.nft())?;
            } else {
                for mapping in pruned {
                    log::info!("unpublished stale {}", mapping.comment());
                }
            }
        }
        Command::Export { nft, .. } => {
            print(if nft {
                nsport::export_nft()?
            } else {
                nsport::MappingsFile::export()?.to_json()
            })?;
        }
        Command::Apply {
            file,
            dry_run,
            skip_missing,
            ..
        } => {
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
            let long = desired.mappings.len() >= 1000 && std::io::stderr().is_terminal();
            if long && !dry_run {
                eprintln!("nsport: applying {} entries…", desired.mappings.len());
            }
            let plan = nsport::apply(&desired, skip_missing, dry_run)?;
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
        Command::Doctor { json, .. } => {
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
        Command::Completions { shell, .. } => {
            print(manual::completions(shell, &mut Cli::command()))?;
        }
        Command::Metrics { .. } => print(nsport::metrics::prometheus(&nsport::list_status()?))?,
        Command::Man { .. } => {
            // The subcommands' arguments are deferred until built (see cli::Command).
            let mut command = Cli::command();
            command.build();
            print(manual::page(&command))?
        }
        Command::Complete { kind, .. } => print(manual::candidates(kind))?,
    }
    Ok(())
}

/// Bad input found by the command itself rather than the library: exit code 2.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// `rm HOST:NS` names a mapping by both sides: refused (exit 2) when the mapping on that
/// host port leads to another namespace port, instead of removing it anyway.
fn check_namespace_sides(specs: &[HostSpec], on: Option<&str>) -> anyhow::Result<()> {
    if specs.iter().all(|spec| spec.ns_ports.is_none()) {
        return Ok(());
    }
    let mappings = nsport::list()?;
    for spec in specs {
        for port in spec.ports.ports() {
            let Some(ns_port) = spec.ns_port_for(port) else {
                continue;
            };
            let wrong = mappings.iter().find(|m| {
                m.proto == spec.proto
                    && m.on.as_deref() == on
                    && m.has_host_port(port)
                    && m.host_addr == spec.host_addr.filter(|a| !a.is_unspecified())
                    && m.to_port_of(port) != ns_port
            });
            if let Some(mapping) = wrong {
                return Err(UsageError(format!(
                    "{}:{ns_port}/{} is not published: host port {} leads to {}",
                    match mapping.host_addr {
                        Some(addr) => with_port(addr, port),
                        None => port.to_string(),
                    },
                    spec.proto,
                    mapping.host_label(),
                    mapping.target_label()
                ))
                .into());
            }
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

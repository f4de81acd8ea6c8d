//! The command line, as clap's definitions.

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
    /// Log each sysctl and hairpin change and each kernel exchange to stderr
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
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
    },
    /// Rebuild a table written by an older nsport in this one's layout, keeping every mapping
    ///
    /// Any change (add, rm, apply, prune, the CNI plugin) migrates an older table first, in
    /// the same batch; migrate does only that. Mapping counters start again from zero.
    Migrate {
        /// Print what would change, as nft commands, and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove everything nsport made and put back the settings it changed
    Flush {
        /// Print what would change, as nft commands, and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Unpublish the mappings whose namespace no longer exists
    Prune {
        /// Print what would change, as nft commands, and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the mappings as a file for `apply`: what was asked for, not counters or state
    Export {
        /// An `nft -f` script that recreates the whole table
        #[arg(long)]
        nft: bool,
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
    },
    /// Check what publishing needs and what breaks it, with the fix for each problem
    Doctor {
        /// Print the checks as one JSON array
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script: nsport completions bash > /etc/bash_completion.d/nsport
    ///
    /// The scripts complete namespace names after --netns, interface names after --via and
    /// published ports after rm, by asking nsport itself while completing.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): nsport man | man -l -
    Man,
    /// Print per-mapping packet and byte counters in the Prometheus text format
    Metrics,
    /// Print completion candidates, one a line (what the completion scripts ask)
    #[command(name = "__complete", hide = true)]
    Complete {
        #[arg(value_enum)]
        kind: manual::Kind,
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
}


//! The README matches the program: every code block marked `<!-- lab: KIND -->` is run in a
//! fresh lab (`ns1`, `ns2`, `ns3`, `br0`, `v3` as the lab names them), command by command,
//! and what each command prints is compared with the lines the README shows under it: the
//! same lines with the same columns, where a number stands for any number (counters,
//! inodes) and `INODE` for an inode. Expected lines starting with `nsport: ` are stderr,
//! and the command must then fail. `NSPORT_README_PRINT=1` prints what the commands print,
//! for updating the README.
//!
//! And "The table" in the README is `nft/bridge.nft`, which `tests/golden.rs` compares with
//! what nsport writes.

mod lab;

use lab::*;

struct Step {
    command: String,
    expected: Vec<String>,
}

struct Block {
    kind: String,
    steps: Vec<Step>,
}

const README: &str = include_str!("../README.md");

fn blocks() -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = README.lines();
    while let Some(line) = lines.next() {
        let Some(kind) = line
            .strip_prefix("<!-- lab: ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(lines.next(), Some("```"), "a lab block starts with ```");
        let mut steps: Vec<Step> = Vec::new();
        for line in lines.by_ref() {
            if line == "```" {
                break;
            }
            if let Some(command) = line.strip_prefix("nsport ") {
                // A comment after two spaces is the README's, not the command's.
                let command = command.split("  #").next().unwrap().trim().to_string();
                steps.push(Step {
                    command,
                    expected: Vec::new(),
                });
            } else {
                let step = steps.last_mut().expect("output follows a command");
                step.expected.push(line.to_string());
            }
        }
        blocks.push(Block {
            kind: kind.to_string(),
            steps,
        });
    }
    blocks
}

/// Whether `actual` has the shape of `expected`: the same tokens, a number for a number.
fn same_shape(expected: &str, actual: &str) -> bool {
    let number = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let expected: Vec<&str> = expected.split_whitespace().collect();
    let actual: Vec<String> = actual
        .split_whitespace()
        .map(|t| {
            // `ino=4026532312"` and the like: the inode is any number.
            match t.find("ino=") {
                Some(at) => {
                    let digits: String = t[at + 4..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    t.replacen(&format!("ino={digits}"), "ino=INODE", 1)
                }
                None => t.to_string(),
            }
        })
        .collect();
    expected.len() == actual.len()
        && expected
            .iter()
            .zip(&actual)
            .all(|(e, a)| e == a || (number(e) && number(a)) || (*e == "INODE" && number(a)))
}

#[test]
fn readme_examples_print_what_the_readme_shows() {
    let blocks = blocks();
    assert!(blocks.len() >= 4, "the README's lab blocks were not found");
    let print = std::env::var_os("NSPORT_README_PRINT").is_some();
    let mut mismatches = Vec::new();
    for block in &blocks {
        let lab = match block.kind.as_str() {
            "ipv4" => Lab::new(BrNetfilter::Off),
            "dual-stack" => Lab::dual_stack(BrNetfilter::Off),
            other => panic!("unknown lab kind {other}"),
        };
        for step in &block.steps {
            let args: Vec<String> = step
                .command
                .split_whitespace()
                .map(|arg| match arg {
                    "ns1" | "ns2" | "ns3" => lab.ns(arg),
                    _ => arg.to_string(),
                })
                .collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let output = lab.nsport(&args);
            let wants_error = step
                .expected
                .first()
                .is_some_and(|line| line.starts_with("nsport: "));
            let printed = if wants_error {
                &output.stderr
            } else {
                &output.stdout
            };
            let actual = lab.normalize(&String::from_utf8_lossy(printed));
            if print {
                println!("nsport {}\n{actual}", step.command);
            }
            if output.status.success() == wants_error {
                mismatches.push(format!(
                    "nsport {}: exit {:?}, {}",
                    step.command,
                    output.status.code(),
                    String::from_utf8_lossy(&output.stderr)
                ));
                continue;
            }
            let actual: Vec<&str> = actual.lines().collect();
            let same = actual.len() == step.expected.len()
                && step
                    .expected
                    .iter()
                    .zip(&actual)
                    .all(|(e, a)| same_shape(e, a));
            if !same {
                mismatches.push(format!(
                    "nsport {}: the README shows\n{}\nbut it prints\n{}",
                    step.command,
                    step.expected.join("\n"),
                    actual.join("\n")
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n\n"));
}

#[test]
fn readme_table_is_the_golden_table() {
    let golden =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/nft/bridge.nft")).unwrap();
    assert!(
        README.contains(&format!("```\n{golden}```")),
        "the README's \"The table\" block differs from nft/bridge.nft"
    );
}

#[test]
fn readme_names_only_files_that_exist() {
    for name in ["DESIGN.md", "BENCHMARKS.md"] {
        if README.contains(name) {
            assert!(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join(name)
                    .exists(),
                "the README refers to {name}, which the repository does not have"
            );
        }
    }
    for path in README
        .split(|c: char| c == '`' || c.is_whitespace() || c == '(' || c == ')')
        .filter(|w| {
            (w.starts_with("src/") || w.starts_with("tests/") || w.starts_with("scripts/"))
                && !w.contains('*')
        })
    {
        let path = path.trim_end_matches([',', '.', ':', ';']);
        assert!(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(path)
                .exists(),
            "the README names {path}, which does not exist"
        );
    }
}

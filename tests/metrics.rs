//! `nsport metrics`: the Prometheus text format, parsed back by a strict parser of the
//! exposition format after real traffic, with a namespace whose name holds a quote, a
//! backslash and a line feed.

mod lab;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;

use lab::*;
use serde_json::Value;

/// One sample: metric name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition format (0.0.4) strictly: `# HELP` and `# TYPE` lines, and
/// samples `name{label="value",...} value` whose label values escape `\\`, `\"` and `\n`
/// and nothing else. Every sample's metric must have its TYPE declared before it; a
/// metric's samples are contiguous and no two have the same labels.
fn parse(text: &str) -> Result<(Vec<Sample>, HashMap<String, String>), String> {
    let mut types = HashMap::new();
    let mut helps = HashSet::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut seen = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    if !text.ends_with('\n') {
        return Err("no final line feed".into());
    }
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').ok_or(format!("bad HELP: {line}"))?;
            if !is_name(name) || !helps.insert(name.to_string()) {
                return Err(format!("bad or repeated HELP: {line}"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE: {line}"))?;
            if !["counter", "gauge", "untyped"].contains(&kind) || !is_name(name) {
                return Err(format!("bad TYPE: {line}"));
            }
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(format!("repeated TYPE: {line}"));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(format!("unexpected line: {line:?}"));
        }
        let name_end = line.find(['{', ' ']).ok_or(format!("no value: {line}"))?;
        let name = &line[..name_end];
        if !is_name(name) || !types.contains_key(name) {
            return Err(format!("sample without TYPE: {line}"));
        }
        if finished.contains(name) {
            return Err(format!("samples of {name} not contiguous"));
        }
        if let Some(previous) = samples.last().filter(|p| p.name != name) {
            finished.insert(previous.name.clone());
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices().peekable();
            loop {
                let start = chars.peek().ok_or("unterminated labels")?.0;
                if after[start..].starts_with('}') {
                    rest = &after[start + 1..];
                    break;
                }
                let eq = after[start..]
                    .find("=\"")
                    .ok_or(format!("bad label: {line}"))?;
                let label = &after[start..start + eq];
                if !is_name(label) || label.contains(':') {
                    return Err(format!("bad label name {label:?}"));
                }
                for _ in 0..eq + 2 {
                    chars.next();
                }
                let mut value = String::new();
                loop {
                    let (_, c) = chars.next().ok_or("unterminated label value")?;
                    match c {
                        '"' => break,
                        '\\' => match chars.next().ok_or("dangling escape")?.1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            other => return Err(format!("bad escape \\{other}")),
                        },
                        '\n' => return Err("raw line feed in a label".into()),
                        c => value.push(c),
                    }
                }
                if labels.insert(label.to_string(), value).is_some() {
                    return Err(format!("repeated label {label}"));
                }
                match chars.peek() {
                    Some((_, ',')) => {
                        chars.next();
                    }
                    Some((_, '}')) => {}
                    _ => return Err(format!("bad label separator: {line}")),
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or(format!("no space before value: {line}"))?;
        let value: f64 = value.parse().map_err(|_| format!("bad value: {line}"))?;
        if !seen.insert(format!("{name}{labels:?}")) {
            return Err(format!("duplicate series: {line}"));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok((samples, types))
}

/// A second name under /run/netns for one of the lab's namespaces, removed on drop.
struct Alias(String);

impl Alias {
    fn new(lab: &Lab, role: &str, name: &str) -> Alias {
        let path = format!("/run/netns/{name}");
        std::fs::write(&path, "").unwrap();
        let alias = Alias(path);
        sh(&[
            "mount",
            "--bind",
            &format!("/run/netns/{}", lab.ns(role)),
            &alias.0,
        ]);
        alias
    }
}

impl Drop for Alias {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn parser_refuses_what_the_format_forbids() {
    for bad in [
        "x 1\n",
        "# TYPE x counter\nx{a=\"b\\q\"} 1\n",
        "# TYPE x counter\nx{a=\"b\"} 1\nx{a=\"b\"} 2\n",
        "# TYPE x counter\nx{a=\"b} 1\n",
        "# TYPE x counter\nx 1",
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
    assert!(parse("# TYPE x counter\nx{a=\"q\\\"\\\\\\n\"} 1\n").is_ok());
}

#[test]
fn metrics_after_real_traffic_parse_back_with_stable_labels() {
    let lab = Lab::new(BrNetfilter::Off);
    let hostile = format!("{}-q\"b\\s\nl", lab.ns("x"));
    let _alias = Alias::new(&lab, "ns1", &hostile);
    let _tcp = lab.serve_tcp("ns1", std::net::Ipv4Addr::UNSPECIFIED, 3000);
    let _udp = lab.serve_udp("ns1", std::net::Ipv4Addr::UNSPECIFIED, 53);
    lab.nsport_ok(&["add", "--netns", &hostile, "3000"]);
    lab.nsport_ok(&[
        "add",
        "--netns",
        &lab.ns("ns1"),
        "5353:53/udp",
        "127.0.0.1:4000:3000",
    ]);
    lab.nsport_ok(&["add", "--to", &NS3.to_string(), "6000:6000"]);
    for _ in 0..3 {
        assert_eq!(lab.tcp("out", HOST_OUT, 3000), some(OUT));
    }
    assert_eq!(lab.udp("out", HOST_OUT, 5353), some(OUT));
    assert!(lab.tcp("host", LOCALHOST, 4000).is_some());

    let text = lab.nsport_ok(&["metrics"]);
    let (samples, types) = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(types["nsport_mapping_packets_total"], "counter");
    assert_eq!(types["nsport_mapping_bytes_total"], "counter");
    let listing: Value = serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    let listing = listing.as_array().unwrap();
    assert_eq!(listing.len(), 4);
    let find = |metric: &str, port: u64| -> &Sample {
        samples
            .iter()
            .find(|s| s.name == metric && s.labels["host_port"] == port.to_string())
            .unwrap_or_else(|| panic!("no {metric} for port {port}:\n{text}"))
    };
    for mapping in listing {
        let port = mapping["host_port"].as_u64().unwrap();
        let packets = find("nsport_mapping_packets_total", port);
        let bytes = find("nsport_mapping_bytes_total", port);
        // The same labels on every series of a mapping, and the same counts as ls.
        assert_eq!(packets.labels, bytes.labels);
        assert_eq!(packets.value, mapping["packets"].as_u64().unwrap() as f64);
        assert_eq!(bytes.value, mapping["bytes"].as_u64().unwrap() as f64);
        let keys: Vec<&str> = packets.labels.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "container",
                "host_addr",
                "host_port",
                "netns",
                "on",
                "proto",
                "target",
                "via"
            ]
        );
        assert_eq!(packets.labels["proto"], mapping["proto"].as_str().unwrap());
        assert_eq!(
            packets.labels["netns"],
            mapping["netns"].as_str().unwrap_or("")
        );
    }
    let web = find("nsport_mapping_packets_total", 3000);
    assert_eq!(web.labels["netns"], hostile, "the hostile name, exactly");
    assert_eq!(web.labels["host_addr"], "0.0.0.0");
    assert_eq!(web.labels["target"], format!("{NS1}:3000"));
    assert_eq!(web.labels["via"], "br0");
    // Three connections: at least SYN, ACK, FIN and the answer each way.
    assert!(web.value >= 12.0, "{text}");
    assert!(find("nsport_mapping_bytes_total", 3000).value > web.value * 40.0);
    assert!(find("nsport_mapping_packets_total", 5353).value >= 2.0);
    assert!(find("nsport_mapping_packets_total", 4000).value >= 4.0);
    assert_eq!(
        find("nsport_mapping_packets_total", 4000).labels["host_addr"],
        "127.0.0.1"
    );
    // No traffic went to 6000.
    assert_eq!(find("nsport_mapping_packets_total", 6000).value, 0.0);
    assert_eq!(
        find("nsport_mapping_packets_total", 6000).labels["netns"],
        ""
    );
    let total = samples
        .iter()
        .find(|s| s.name == "nsport_mappings")
        .unwrap();
    assert_eq!(total.value, 4.0);

    // The metrics unit's own command (systemd's `$$` is one `$`), with a directory of the
    // test's in place of node_exporter's: it leaves one complete .prom file and no other.
    let unit = include_str!("../packaging/nsport-metrics.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/bin/sh -c '"))
        .and_then(|l| l.strip_suffix('\''))
        .expect("ExecStart=/bin/sh -c '…'");
    let dir = TextfileDir(std::env::temp_dir().join(lab.ns("textfile")));
    std::fs::create_dir(&dir.0).unwrap();
    let script = line
        .replace("$$", "$")
        .replace("@BINDIR@/nsport", env!("CARGO_BIN_EXE_nsport"))
        .replace("/var/lib/prometheus/node-exporter", dir.0.to_str().unwrap());
    let state = format!("NSPORT_STATE_DIR={}", lab.state_dir().display());
    let host = lab.ns("host");
    sh(&[
        "ip", "netns", "exec", &host, "env", &state, "/bin/sh", "-c", &script,
    ]);
    let files: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, ["nsport.prom"]);
    let written = std::fs::read_to_string(dir.0.join("nsport.prom")).unwrap();
    let (again, _) = parse(&written).unwrap_or_else(|e| panic!("{e}\n{written}"));
    assert_eq!(again.len(), samples.len());
}

/// A directory removed with its files when dropped.
struct TextfileDir(std::path::PathBuf);

impl Drop for TextfileDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

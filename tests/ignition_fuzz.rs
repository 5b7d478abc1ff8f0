//! Property-based fuzzing of the Ignition JSON and TOML parsers: no input makes them panic,
//! and the JSON parser accepts exactly what serde_json accepts.
//!
//! The harness is tests/fuzz_common: in the suite each target runs a few cases, `make fuzz`
//! runs many; failing seeds are kept in tests/fuzz-regressions/ and replayed first.

use kiln::ignition::{build_config, json, source, validate_json};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;
use std::path::Path;

mod fuzz_common;
use fuzz_common::{apply_edits, edits, root, token_text};

/// The harness with this file's default of a few cases per target.
fn fuzz<S: Strategy>(name: &str, strat: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    fuzz_common::fuzz(name, 24, strat, test)
}

fn seeds_json() -> Vec<String> {
    let mut v = Vec::new();
    let dir = root().join("tests/ignition/invalid");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    for n in names {
        v.push(std::fs::read_to_string(n).unwrap());
    }
    for ex in ["vm", "bare-metal"] {
        let p = root().join(format!("examples/ignition/{ex}.toml"));
        v.push(build_config(&p, None, None).unwrap());
    }
    v.push(
        build_config(
            &root().join("tests/ignition/valid/everything.toml"),
            None,
            None,
        )
        .unwrap(),
    );
    v
}

fn seeds_toml() -> Vec<String> {
    [
        "examples/ignition/vm.toml",
        "examples/ignition/bare-metal.toml",
        "examples/ignition/k8s-worker.toml",
        "tests/ignition/valid/everything.toml",
    ]
    .iter()
    .map(|p| std::fs::read_to_string(root().join(p)).unwrap())
    .collect()
}

const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\"ignition\"",
    "\"version\"",
    "\"3.3.0\"",
    "\"storage\"",
    "\"files\"",
    "\"path\"",
    "\"/etc/x\"",
    "\"mode\"",
    "420",
    "-1",
    "1.5",
    "1e3",
    "true",
    "null",
    "\"\\u0041\"",
    "\"\\ud800\"",
    " ",
    "\n",
    "\"systemd\"",
    "\"units\"",
    "\"name\"",
    "\"a.service\"",
    "\"contents\"",
    "\"source\"",
    "\"data:,x\"",
    "\\",
    "0",
];

fn check_json(text: &str) -> Result<(), TestCaseError> {
    let r = validate_json(text);
    // Every diagnostic has a position inside the text.
    let lines = text.split('\n').count().max(1);
    for d in &r.diagnostics {
        prop_assert!(d.line >= 1 && d.line <= lines, "{d} outside {lines} lines");
        prop_assert!(d.path.starts_with('$'));
    }
    // Agrees with serde_json on what is JSON (lone surrogates aside: Go and kiln replace
    // them, serde_json refuses them).
    if !text.contains("\\u") {
        let ours = json::parse(text).is_ok();
        // serde_json also refuses numbers beyond f64; Go's decoder skips them in keys it
        // ignores, so kiln keeps them as literals.
        let theirs = serde_json::from_str::<Value>(text);
        let out_of_range = theirs
            .as_ref()
            .is_err_and(|e| e.to_string().contains("number out of range"));
        if !out_of_range {
            prop_assert_eq!(ours, theirs.is_ok(), "parsers disagree on {:?}", text);
        }
    }
    Ok(())
}

#[test]
fn json_arbitrary_strings() {
    fuzz("ignition-json-arbitrary", any::<String>(), |s| {
        check_json(&s)
    });
}

#[test]
fn json_token_soup() {
    fuzz("ignition-json-tokens", token_text(JSON_TOKENS), |s| {
        check_json(&s)
    });
}

#[test]
fn json_mutated_configs() {
    let seeds = seeds_json();
    let n = seeds.len();
    fuzz("ignition-json-mutated", (0..n, edits()), |(i, e)| {
        check_json(&apply_edits(&seeds[i], &e))
    });
}

/// Replaces the value at a random place with a random, often well-typed, value: this
/// drives the semantic pass, which byte edits rarely reach.
fn replace_at(v: &mut Value, sel: &[u32], with: Value) {
    let Some((s, rest)) = sel.split_first() else {
        *v = with;
        return;
    };
    let child = match v {
        Value::Object(m) if !m.is_empty() => {
            let k = m
                .keys()
                .nth(*s as usize % m.len())
                .cloned()
                .unwrap_or_default();
            m.get_mut(&k)
        }
        Value::Array(a) if !a.is_empty() => {
            let l = a.len();
            a.get_mut(*s as usize % l)
        }
        _ => None,
    };
    match child {
        Some(c) => replace_at(c, rest, with),
        None => *v = with,
    }
}

fn values() -> impl Strategy<Value = Value> {
    let strings = prop_oneof![
        Just(""),
        Just("/"),
        Just("/etc/x"),
        Just("etc/x"),
        Just("/a/../b"),
        Just("/dev/sdb"),
        Just("a.service"),
        Just("x.conf"),
        Just("[Unit]\nA"),
        Just("[Install]\nWantedBy=x\n"),
        Just("data:,x"),
        Just("data:;base64,!!"),
        Just("https://h/x"),
        Just("ftp://x"),
        Just("sha512-00"),
        Just("sha256-abc"),
        Just("gzip"),
        Just("ext4"),
        Just("swap"),
        Just("raid1"),
        Just("tpm2"),
        Just("3.3.0"),
        Just("3.0.0"),
        Just("%zz"),
        Just("0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        Just("x:y"),
    ]
    .prop_map(|s| Value::String(s.to_string()));
    let leaf = prop_oneof![
        strings,
        any::<i64>().prop_map(Value::from),
        (-2i64..5000).prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just("path"),
                        Just("name"),
                        Just("source"),
                        Just("label"),
                        Just("number"),
                        Just("startMiB"),
                        Just("sizeMiB"),
                        Just("hash"),
                        Just("device"),
                        Just("format"),
                        Just("contents"),
                        Just("enabled"),
                        Just("target"),
                        Just("hard"),
                        Just("overwrite"),
                        Just("x")
                    ],
                    inner
                ),
                0..4
            )
            .prop_map(|kv| Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

#[test]
fn json_structured_mutations() {
    let seeds: Vec<Value> = seeds_json()
        .iter()
        .filter_map(|s| serde_json::from_str(s).ok())
        .collect();
    let n = seeds.len();
    fuzz(
        "ignition-json-structured",
        (
            0..n,
            proptest::collection::vec(
                (proptest::collection::vec(any::<u32>(), 1..7), values()),
                1..4,
            ),
        ),
        |(i, muts)| {
            let mut v = seeds[i].clone();
            for (sel, with) in muts {
                replace_at(&mut v, &sel, with);
            }
            check_json(&serde_json::to_string_pretty(&v).unwrap())
        },
    );
}

const TOML_TOKENS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "\"",
    "'",
    ".",
    ",",
    "{",
    "}",
    "\n",
    " ",
    "storage",
    "files",
    "passwd",
    "users",
    "systemd",
    "units",
    "path",
    "mode",
    "\"0644\"",
    "644",
    "name",
    "contents",
    "inline",
    "local",
    "source",
    "\"/etc/x\"",
    "true",
    "1979-05-27",
    "#",
    "\"\"\"",
    "trees",
    "kernel_arguments",
    "should_exist",
    "-1",
    "1.5",
    "\\",
];

fn check_toml(dir: &Path, text: &str) -> Result<(), TestCaseError> {
    let file = source::SourceFile {
        path: "fuzz.toml".into(),
        text: text.to_string(),
    };
    if let Err(e) = source::parse_source(&file) {
        if let Some((l, _)) = e.pos {
            prop_assert!(l >= 1 && l <= text.split('\n').count().max(1), "{e}");
        }
        return Ok(());
    }
    let p = dir.join("fuzz.toml");
    std::fs::write(&p, text).unwrap();
    // Local references resolve against the examples so mutated configs stay meaningful.
    let files = root().join("examples/ignition");
    if let Ok(json) = build_config(&p, Some(&files), None) {
        prop_assert!(
            !validate_json(&json).has_errors(),
            "built an invalid config"
        );
    }
    Ok(())
}

#[test]
fn toml_token_soup() {
    let dir = tempfile::tempdir().unwrap();
    fuzz("ignition-toml-tokens", token_text(TOML_TOKENS), |s| {
        check_toml(dir.path(), &s)
    });
}

#[test]
fn toml_mutated_configs() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = seeds_toml();
    let n = seeds.len();
    fuzz("ignition-toml-mutated", (0..n, edits()), |(i, e)| {
        check_toml(dir.path(), &apply_edits(&seeds[i], &e))
    });
}

#[test]
fn toml_arbitrary_strings() {
    let dir = tempfile::tempdir().unwrap();
    fuzz("ignition-toml-arbitrary", any::<String>(), |s| {
        check_toml(dir.path(), &s)
    });
}

/// Differential: structurally mutated configs (in every spec version kiln reads) are valid
/// for kiln exactly when Debian's ignition-validate accepts them.
#[test]
fn agrees_with_ignition_validate_on_mutated_configs() {
    let seeds: Vec<Value> = seeds_json()
        .iter()
        .filter_map(|s| serde_json::from_str::<Value>(s).ok())
        .filter(|v| v.is_object())
        .collect();
    let n = seeds.len();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.ign");
    fuzz(
        "ignition-differential",
        (
            0..n,
            0usize..4,
            proptest::collection::vec(
                (proptest::collection::vec(any::<u32>(), 1..7), values()),
                1..4,
            ),
        ),
        |(i, ver, muts)| {
            let mut v = seeds[i].clone();
            for (sel, with) in muts {
                replace_at(&mut v, &sel, with);
            }
            if let Some(ign) = v.get_mut("ignition").and_then(|x| x.as_object_mut()) {
                ign.insert(
                    "version".into(),
                    Value::from(["3.0.0", "3.1.0", "3.2.0", "3.3.0"][ver]),
                );
            }
            let text = serde_json::to_string_pretty(&v).unwrap();
            std::fs::write(&file, &text).unwrap();
            let theirs = kiln::cmd::Cmd::new("/usr/bin/ignition-validate")
                .arg(&file)
                .run()
                .is_ok();
            let r = validate_json(&text);
            prop_assert_eq!(
                !r.has_errors(),
                theirs,
                "kiln and ignition-validate disagree on\n{}\nkiln:\n{}",
                text,
                r
            );
            Ok(())
        },
    );
}

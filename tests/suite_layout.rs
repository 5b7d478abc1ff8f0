//! The suite's layout rule (tests/suite.sh), checked so it cannot rot: the tests that boot
//! a VM live in `tests/vm_*.rs` and nowhere else, and every such file starts with its
//! `// suite-minutes: N` line (the VM groups are balanced by it).
//!
//! A test boots a VM when its body calls `Vm::start` or calls a function (of its own
//! file or of tests/common/) that does, at any depth. Files are read as text: no VM,
//! no build, a fraction of a second.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What starts a VM (spelled in two pieces so that this file does not contain it).
const START: &str = concat!("Vm::", "start(");

/// One function of a file: its name, its text and whether it is a `#[test]`.
struct Func {
    name: String,
    body: String,
    test: bool,
}

/// The functions of a Rust file, at any indentation (methods too): from the `fn` line to
/// the closing brace at the same indentation.
fn functions(text: &str) -> Vec<Func> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let Some(rest) = ["fn ", "pub fn ", "pub(crate) fn ", "async fn "]
            .iter()
            .find_map(|p| trimmed.strip_prefix(p))
        else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let close = format!("{}}}", " ".repeat(indent));
        let Some(end) = lines[i + 1..]
            .iter()
            .position(|l| l.trim_end() == close)
            .map(|e| i + 1 + e)
        else {
            continue; // a declaration without a body
        };
        let test = lines[..i]
            .iter()
            .rev()
            .map(|l| l.trim())
            .take_while(|l| l.starts_with("#[") || l.starts_with("//"))
            .any(|l| l == "#[test]");
        out.push(Func {
            name,
            body: lines[i + 1..=end].join("\n"),
            test,
        });
    }
    out
}

/// Whether `body` calls `name(` as a function (a path like `common::name(` counts; a
/// method call `.name(` does not).
fn calls(body: &str, name: &str) -> bool {
    let pat = format!("{name}(");
    body.match_indices(&pat).any(|(at, _)| {
        let before = body[..at].chars().next_back();
        !matches!(before, Some(c) if c.is_alphanumeric() || c == '_' || c == '.')
    })
}

/// Whether a function body starts a VM itself: through the harness, or by running the
/// `kiln run` binary as a user would.
fn starts_vm(body: &str) -> bool {
    body.contains(START) || (body.contains("kiln_bin()") && body.contains(".arg(\"run\")"))
}

/// The names of the functions among `funcs` that start a VM, directly or through others.
fn vm_starters<'a>(funcs: impl Iterator<Item = &'a Func> + Clone) -> BTreeSet<String> {
    let mut set: BTreeSet<String> = funcs
        .clone()
        .filter(|f| starts_vm(&f.body))
        .map(|f| f.name.clone())
        .collect();
    loop {
        let more: Vec<String> = funcs
            .clone()
            .filter(|f| !set.contains(&f.name))
            .filter(|f| set.iter().any(|n| calls(&f.body, n)))
            .map(|f| f.name.clone())
            .collect();
        if more.is_empty() {
            return set;
        }
        set.extend(more);
    }
}

/// What breaks the rule in one test file (`name` is its file name), given the functions
/// of tests/common/.
fn problems(name: &str, text: &str, common: &[Func]) -> Vec<String> {
    let mut bad = Vec::new();
    let vm_file = name.starts_with("vm_");
    let own = functions(text);
    let starters = vm_starters(own.iter().chain(common));
    if vm_file {
        let first = text.lines().next().unwrap_or("");
        let minutes = first
            .strip_prefix("// suite-minutes: ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u32>().ok());
        if !matches!(minutes, Some(m) if m > 0) {
            bad.push(format!(
                "{name}: the first line must be `// suite-minutes: N` (N > 0), not {first:?}"
            ));
        }
    } else if text.contains(START) {
        bad.push(format!(
            "{name} calls {START} but is not named vm_*.rs (tests/suite.sh)"
        ));
    }
    for f in own.iter().filter(|f| f.test) {
        let boots = starters.contains(&f.name);
        if boots && !vm_file {
            bad.push(format!(
                "{name}: test {} boots a VM; it belongs in a tests/vm_*.rs file",
                f.name
            ));
        }
        if !boots && vm_file {
            bad.push(format!(
                "{name}: test {} boots no VM; it belongs in a file not named vm_*.rs",
                f.name
            ));
        }
    }
    bad
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    v.sort();
    v
}

fn common_functions() -> Vec<Func> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common");
    rust_files(&dir)
        .iter()
        .flat_map(|p| functions(&std::fs::read_to_string(p).unwrap()))
        .collect()
}

#[test]
fn vm_tests_live_in_vm_files_and_only_there() {
    let common = common_functions();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let files = rust_files(&dir);
    let mut bad = Vec::new();
    let mut vm_files = 0;
    for p in &files {
        let name = p.file_name().unwrap().to_str().unwrap();
        vm_files += usize::from(name.starts_with("vm_"));
        bad.extend(problems(
            name,
            &std::fs::read_to_string(p).unwrap(),
            &common,
        ));
    }
    assert!(bad.is_empty(), "test layout:\n{}", bad.join("\n"));
    // The rule holds for something: there are VM files, and the other files are read.
    assert!(vm_files >= 1 && files.len() > vm_files, "{files:?}");
}

/// The checker itself finds each kind of mistake (a guard that cannot fail guards nothing).
#[test]
fn the_checker_finds_misplaced_tests() {
    let common = functions(&format!(
        "pub fn booted_base() -> Vm {{\n    let vm = {START}o).unwrap();\n    vm\n}}\n"
    ));
    // A test reaching Vm::start through its own helper, outside a vm_ file.
    let direct = format!(
        "fn helper() {{\n    let mut vm = {START}o).unwrap();\n}}\n\n\
         #[test]\nfn a() {{\n    helper();\n}}\n"
    );
    let p = problems("x.rs", &direct, &common);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].contains("not named vm_") && p[1].contains("test a boots a VM"));
    // Through a helper in tests/common/ (the file never names it).
    let via_common = "#[test]\nfn b() {\n    let vm = common::booted_base();\n}\n";
    let p = problems("y.rs", via_common, &common);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("test b boots a VM"), "{p:?}");
    // A vm_ file without its minutes line, and a test in it that boots nothing.
    let vm = "//! no minutes\n#[test]\nfn c() {\n    let _ = 1;\n}\n\n\
              #[test]\nfn d() {\n    booted_base();\n}\n";
    let p = problems("vm_z.rs", vm, &common);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].contains("suite-minutes") && p[1].contains("test c boots no VM"));
    // A well-placed file passes; a method call of the same name is not a call.
    let ok = "// suite-minutes: 3 (TCG)\n#[test]\nfn e() {\n    booted_base();\n}\n";
    assert!(problems("vm_ok.rs", ok, &common).is_empty());
    let method = "#[test]\nfn f() {\n    x.booted_base();\n}\n";
    assert!(problems("ok.rs", method, &common).is_empty());
}

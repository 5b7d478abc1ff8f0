//! Ignition: examples build and Debian's ignition-validate accepts them; the invalid corpus
//! is rejected by both validators with kiln naming the expected JSON path; build -> parse
//! with ignition-config -> same content; TOML errors point at file, key and line.

use ignition_config::Config;
use kiln::cmd::Cmd;
use kiln::error::InputError;
use kiln::ignition::{build, build_config, source, transpile, validate_json};
use std::io::Read;
use std::path::{Path, PathBuf};

const IGNITION_VALIDATE: &str = "/usr/bin/ignition-validate";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs Debian's ignition-validate on `text`; Ok(()) when it accepts it.
fn ignition_validate(text: &str, name: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    Cmd::new(IGNITION_VALIDATE)
        .arg(&p)
        .run()
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}

/// Every TOML config the docs and tests use, with its fragments directory.
fn sources() -> Vec<(PathBuf, Option<PathBuf>)> {
    let mut v = Vec::new();
    for dir in ["examples/ignition", "tests/ignition/valid"] {
        let mut names: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        names.sort();
        for n in names {
            let frag = n.with_extension("d");
            v.push((n, frag.is_dir().then_some(frag)));
        }
    }
    assert!(v.len() >= 4, "examples missing: {v:?}");
    v
}

fn decode(res: &ignition_config::v3_3::Resource) -> Vec<u8> {
    let src = res.source.as_deref().expect("source");
    let raw = kiln::ignition::validate::decode_data_url(src).expect("data URL");
    match res.compression.as_deref() {
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .expect("gzip");
            out
        }
        None | Some("") => raw,
        Some(c) => panic!("unexpected compression {c}"),
    }
}

fn local(src: &Path, rel: &str) -> Vec<u8> {
    std::fs::read(src.parent().unwrap().join(rel)).unwrap()
}

#[test]
fn examples_build_and_ignition_validate_accepts_them() {
    for (src, frag) in sources() {
        let b = build(&src, None, frag.as_deref())
            .unwrap_or_else(|e| panic!("{}: {e:#}", src.display()));
        let r = validate_json(&b.json);
        assert!(
            !r.has_errors(),
            "{}: kiln rejects its own output:\n{r}",
            src.display()
        );
        ignition_validate(&b.json, "out.ign")
            .unwrap_or_else(|e| panic!("{}: ignition-validate: {e}", src.display()));
        // Reproducible: same input, same bytes.
        assert_eq!(b.json, build_config(&src, None, frag.as_deref()).unwrap());
    }
}

#[test]
fn round_trip_keeps_content() {
    for (src, frag) in sources() {
        let json = build_config(&src, None, frag.as_deref()).unwrap();
        let (cfg, warnings) = Config::parse_str(&json).unwrap();
        assert!(warnings.is_empty(), "{}: {warnings:?}", src.display());
        let Config::V3_3(cfg) = cfg else {
            panic!("not 3.3.0")
        };
        // Nothing lost or invented by the typed parse.
        assert_eq!(transpile::to_json(&cfg), json, "{}", src.display());

        let loaded = source::load(&src, frag.as_deref()).unwrap();
        let s = &loaded.source;
        let storage = cfg.storage.clone().unwrap_or_default();
        let files = storage.files.unwrap_or_default();
        for f in &s.storage.files {
            let out = files
                .iter()
                .find(|o| o.path == f.path)
                .unwrap_or_else(|| panic!("{}: file {} missing", src.display(), f.path));
            assert_eq!(out.mode, f.mode.map(|m| m.0 as i64));
            if let Some(c) = &f.contents {
                let got = out.contents.as_ref().unwrap();
                if let Some(i) = &c.inline {
                    assert_eq!(decode(got), i.as_bytes(), "{}", f.path);
                } else if let Some(l) = &c.local {
                    assert_eq!(decode(got), local(&src, l), "{}", f.path);
                } else {
                    assert_eq!(got.source, c.source);
                    assert_eq!(
                        got.verification.as_ref().and_then(|v| v.hash.clone()),
                        c.verification.as_ref().and_then(|v| v.hash.clone())
                    );
                }
            }
        }
        for t in &s.storage.trees {
            let base = src.parent().unwrap().join(&t.local);
            let dest = t.path.clone().unwrap_or_else(|| "/".into());
            for e in walk(&base) {
                let rel = e.strip_prefix(&base).unwrap().to_str().unwrap().to_string();
                let p = format!("{}/{}", dest.trim_end_matches('/'), rel);
                let meta = std::fs::symlink_metadata(&e).unwrap();
                if meta.file_type().is_symlink() {
                    let l = storage
                        .links
                        .iter()
                        .flatten()
                        .find(|l| l.path == p)
                        .unwrap();
                    assert_eq!(
                        l.target.as_deref(),
                        std::fs::read_link(&e).unwrap().to_str()
                    );
                } else {
                    let f = files.iter().find(|f| f.path == p).unwrap();
                    assert_eq!(
                        decode(f.contents.as_ref().unwrap()),
                        std::fs::read(&e).unwrap()
                    );
                }
            }
        }
        let units = cfg
            .systemd
            .clone()
            .and_then(|s| s.units)
            .unwrap_or_default();
        for u in &s.systemd.units {
            let out = units.iter().find(|o| o.name == u.name).unwrap();
            assert_eq!(out.enabled, u.enabled);
            assert_eq!(out.mask, u.mask);
            let want = u.contents.clone().or_else(|| {
                u.contents_local
                    .as_ref()
                    .map(|l| String::from_utf8(local(&src, l)).unwrap())
            });
            assert_eq!(out.contents, want, "{}", u.name);
            assert_eq!(out.dropins.as_ref().map_or(0, |d| d.len()), u.dropins.len());
        }
        let users = cfg.passwd.clone().and_then(|p| p.users).unwrap_or_default();
        for u in &s.passwd.users {
            let out = users.iter().find(|o| o.name == u.name).unwrap();
            let keys = out.ssh_authorized_keys.clone().unwrap_or_default();
            for k in &u.ssh_authorized_keys {
                assert!(keys.contains(k));
            }
            assert_eq!(out.password_hash, u.password_hash);
            assert_eq!(out.uid, u.uid);
            assert_eq!(out.groups.clone().unwrap_or_default(), u.groups);
        }
        let k = cfg.kernel_arguments.clone().unwrap_or_default();
        assert_eq!(
            k.should_exist.unwrap_or_default(),
            s.kernel_arguments.should_exist
        );
        assert_eq!(
            k.should_not_exist.unwrap_or_default(),
            s.kernel_arguments.should_not_exist
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn invalid_corpus_is_rejected_by_both_validators() {
    let dir = root().join("tests/ignition/invalid");
    let expected = std::fs::read_to_string(dir.join("EXPECTED")).unwrap();
    let mut n = 0;
    let mut listed = Vec::new();
    for line in expected
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (file, path) = line.split_once(' ').unwrap();
        listed.push(file.to_string());
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let r = validate_json(&text);
        assert!(r.has_errors(), "{file}: kiln accepts it:\n{r}");
        assert!(
            r.errors().any(|d| d.path == path.trim()),
            "{file}: no error at {path}:\n{r}"
        );
        assert!(
            ignition_validate(&text, file).is_err(),
            "{file}: ignition-validate accepts it"
        );
        n += 1;
    }
    assert!(n >= 30, "only {n} invalid configs");
    // Every file in the corpus has an expectation.
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".json") {
            assert!(listed.contains(&name), "{name} has no line in EXPECTED");
        }
    }
}

#[test]
fn kiln_validate_cli_prints_path_and_position_and_fails() {
    let f = root().join("tests/ignition/invalid/relative-file-path.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["ignition", "validate"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error at $.storage.files.0.path, line 8 col 17: path not absolute"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["ignition", "validate", "--json"])
        .arg(&f)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["diagnostics"][0]["path"], "$.storage.files.0.path");
}

fn build_err(toml: &str, files: &[(&str, &str)]) -> InputError {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, toml).unwrap();
    for (name, text) in files {
        let fp = dir.path().join(name);
        std::fs::create_dir_all(fp.parent().unwrap()).unwrap();
        std::fs::write(fp, text).unwrap();
    }
    let e = build_config(&p, None, None).unwrap_err();
    let ie = e
        .downcast::<InputError>()
        .unwrap_or_else(|e| panic!("not an InputError: {e:#}"));
    assert!(ie.file.ends_with("c.toml"), "{ie}");
    ie
}

#[test]
fn toml_errors_name_file_key_and_line() {
    let e = build_err(
        "[[storage.files]]\npath = \"/etc/a\"\n\n[[storage.files]]\npath = \"/etc/b\"\ncontents.local = \"missing.txt\"\n",
        &[],
    );
    assert_eq!(e.key, "storage.files[1].contents.local");
    assert_eq!(e.pos, Some((6, 18)), "{e}");
    assert!(e.message.contains("missing.txt"), "{e}");

    let e = build_err("[[storage.files]]\npath = \"/a\"\nmode = 420\n", &[]);
    assert_eq!(e.pos, Some((3, 8)), "{e}");
    assert!(e.message.contains("decimal 420 is octal 0644"), "{e}");

    // A unit name is checked at the door with the recipe's unit-name rule (before issue 18
    // the JSON validator found it: "invalid systemd unit extension").
    let e = build_err(
        "[[systemd.units]]\nname = \"ok.service\"\n\n[[systemd.units]]\nname = \"bad.servic\"\n",
        &[],
    );
    assert_eq!(e.key, "systemd.units[1].name");
    assert_eq!(e.pos, Some((5, 8)), "{e}");
    assert!(e.message.contains("unknown unit type .servic"), "{e}");

    // A rule found by validating the output is mapped back to the TOML key.
    let e = build_err(
        "[[storage.filesystems]]\ndevice = \"/dev/sdb1\"\nformat = \"ext4\"\n\n[[storage.filesystems]]\ndevice = \"/dev/sdc1\"\nformat = \"vfat\"\nlabel = \"longer-than-11\"\n",
        &[],
    );
    assert_eq!(e.key, "storage.filesystems[1].label");
    assert_eq!(e.pos, Some((8, 9)), "{e}");
    assert!(e.message.contains("cannot be longer than 11"), "{e}");

    let e = build_err("[[storage.files]]\npath = \"etc/relative\"\n", &[]);
    assert_eq!(
        (e.key.as_str(), e.pos),
        ("storage.files[0].path", Some((2, 8)))
    );

    let e = build_err("[storage]\nfiels = []\n", &[]);
    assert_eq!(e.pos, Some((2, 1)), "{e}");
    assert!(e.message.contains("unknown field `fiels`"), "{e}");

    let e = build_err(
        "[[storage.files]]\npath = \"/a\"\ncontents = { inline = \"x\", local = \"y\" }\n",
        &[],
    );
    assert!(
        e.message.contains("exactly one of inline, local or source"),
        "{e}"
    );

    let e = build_err(
        "[[storage.files]]\npath = \"/a\"\ncontents.source = \"https://h/x\"\ncontents.verification.hash = \"sha256-abc\"\n",
        &[],
    );
    assert_eq!(e.key, "storage.files[0].contents.verification.hash", "{e}");
    assert_eq!(e.pos, Some((4, 30)), "{e}");

    let e = build_err("[[storage.trees]]\nlocal = \"../outside\"\n", &[]);
    assert!(e.message.contains("stay inside"), "{e}");

    // Every error is listed, each with its own TOML location.
    let e = build_err(
        "[[storage.filesystems]]\ndevice = \"/dev/sdb1\"\nformat = \"xfs\"\nlabel = \"longer-than-12\"\n\n[[storage.files]]\npath = \"/x\"\ncontents.source = \"ftp://h/x\"\n",
        &[],
    );
    assert_eq!(e.pos, Some((8, 19)), "{e}");
    assert!(
        e.message
            .contains("and: ") && e.message.contains("c.toml:4:9: storage.filesystems[0].label: filesystem labels cannot be longer than 12"),
        "{e}"
    );

    let e = build_err("[passwd\n", &[]);
    assert_eq!(e.pos.map(|p| p.0), Some(1), "{e}");
}

#[test]
fn fragments_merge_in_order_and_errors_point_at_the_fragment() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.toml");
    std::fs::write(
        &base,
        "[[storage.files]]\npath = \"/etc/a\"\nmode = \"0644\"\ncontents.inline = \"base\"\n\n[[passwd.users]]\nname = \"core\"\nssh_authorized_keys = [\"ssh-ed25519 AAAA base\"]\n\n[kernel_arguments]\nshould_exist = [\"a=1\"]\n",
    )
    .unwrap();
    let frags = dir.path().join("frags");
    std::fs::create_dir(&frags).unwrap();
    std::fs::write(
        frags.join("20-late.toml"),
        "[[storage.files]]\npath = \"/etc/a\"\ncontents.inline = \"late\"\n",
    )
    .unwrap();
    std::fs::write(
        frags.join("10-early.toml"),
        "[[storage.files]]\npath = \"/etc/a\"\nmode = \"0600\"\ncontents.inline = \"early\"\n\n[[storage.files]]\npath = \"/etc/b\"\ncontents.inline = \"b\"\n\n[[passwd.users]]\nname = \"core\"\nssh_authorized_keys = [\"ssh-ed25519 BBBB early\"]\n\n[kernel_arguments]\nshould_exist = [\"b=2\", \"a=1\"]\n",
    )
    .unwrap();
    let json = build_config(&base, None, Some(&frags)).unwrap();
    let (Config::V3_3(cfg), _) = Config::parse_str(&json).unwrap() else {
        panic!()
    };
    let files = cfg.storage.unwrap().files.unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].path, "/etc/a");
    assert_eq!(decode(files[0].contents.as_ref().unwrap()), b"late");
    assert_eq!(files[0].mode, Some(0o600)); // from 10-early, not overridden by 20-late
    let users = cfg.passwd.unwrap().users.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].ssh_authorized_keys.as_ref().unwrap().len(), 2);
    assert_eq!(
        cfg.kernel_arguments.unwrap().should_exist.unwrap(),
        vec!["a=1", "b=2"]
    );

    // An error in a fragment names the fragment and its line.
    std::fs::write(
        frags.join("30-bad.toml"),
        "\n[[storage.links]]\npath = \"/etc/l\"\ntarget = \"/x\"\nhard = \"yes\"\n",
    )
    .unwrap();
    let e = build_config(&base, None, Some(&frags)).unwrap_err();
    let ie = e.downcast::<InputError>().unwrap();
    assert!(ie.file.ends_with("30-bad.toml"), "{ie}");
    assert_eq!(ie.pos, Some((5, 8)), "{ie}");
    std::fs::remove_file(frags.join("30-bad.toml")).unwrap();

    // A semantic error found after merging points at the fragment that set the value.
    std::fs::write(
        frags.join("40-unit.toml"),
        "# comment\n\n[[systemd.units]]\nname = \"x.bogus\"\n",
    )
    .unwrap();
    let ie = build_config(&base, None, Some(&frags))
        .unwrap_err()
        .downcast::<InputError>()
        .unwrap();
    assert!(ie.file.ends_with("40-unit.toml"), "{ie}");
    assert_eq!(ie.pos, Some((4, 8)), "{ie}");

    // Unnumbered fragments are refused.
    std::fs::write(frags.join("extra.toml"), "").unwrap();
    assert!(build_config(&base, None, Some(&frags)).is_err());
}

#[test]
fn build_cli_writes_atomically_and_exits_2_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.ign");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["ignition", "build"])
        .arg(root().join("examples/ignition/vm.toml"))
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(!validate_json(&std::fs::read_to_string(&out).unwrap()).has_errors());

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[storage.files]]\npath = \"/a\"\nmode = 644\n").unwrap();
    let out2 = dir.path().join("bad.ign");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["ignition", "build"])
        .arg(&bad)
        .arg("-o")
        .arg(&out2)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(!out2.exists());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.toml:3:8: storage.files[0].mode"), "{err}");
    // No temporary left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn valid_json_corpus_is_accepted_by_both_with_the_same_warnings() {
    let dir = root().join("tests/ignition/valid");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let r = validate_json(&text);
        assert!(!r.has_errors(), "{}:\n{r}", p.display());
        let out = Cmd::new(IGNITION_VALIDATE)
            .arg(&p)
            .run()
            .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        // Same warnings, at the same path, line and column.
        let theirs: Vec<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .chain(String::from_utf8_lossy(&out.stdout).lines())
            .filter(|l| l.starts_with("warning at "))
            .map(|l| l.split(": ").next().unwrap().to_string())
            .collect();
        for t in &theirs {
            assert!(
                r.warnings()
                    .any(|d| d.to_string().starts_with(&format!("{t}: "))),
                "{}: ignition-validate says {t:?}, kiln:\n{r}",
                p.display()
            );
        }
        n += 1;
    }
    assert!(n >= 4);
}

/// Builds `toml` as `cfg/c.toml` in a fresh directory, `cfg/` prepared by `setup`, on a
/// thread: a build that blocks (a FIFO read) fails the test instead of hanging it.
fn build_in(toml: &str, setup: impl FnOnce(&Path)) -> (tempfile::TempDir, anyhow::Result<String>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg_dir = dir.path().join("cfg");
    std::fs::create_dir(&cfg_dir).unwrap();
    let p = cfg_dir.join("c.toml");
    std::fs::write(&p, toml).unwrap();
    setup(&cfg_dir);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(build_config(&p, None, None));
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("kiln ignition build blocked (reading a FIFO?)");
    (dir, r)
}

fn input_err(r: anyhow::Result<String>) -> InputError {
    let e = r.expect_err("accepted");
    e.downcast::<InputError>()
        .unwrap_or_else(|e| panic!("not an InputError: {e:#}"))
}

fn mkfifo(p: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

const SECRET: &str = "host-secret-4711";

/// A host file outside the files directory `dir` (beside it) the configs try to reach.
fn outside_secret(dir: &Path) -> PathBuf {
    let s = dir.parent().unwrap().join("outside/shadow");
    std::fs::create_dir_all(s.parent().unwrap()).unwrap();
    std::fs::write(&s, format!("root:{SECRET}:19000::::::\n")).unwrap();
    s
}

#[test]
fn local_files_never_follow_a_symlink_out_of_the_files_dir() {
    use std::os::unix::fs::symlink;
    let cases: &[(&str, &str, (usize, usize))] = &[
        (
            "[[storage.files]]\npath = \"/etc/x\"\ncontents.local = \"files/link\"\n",
            "storage.files[0].contents.local",
            (3, 18),
        ),
        (
            "[[storage.files]]\npath = \"/etc/x\"\nappend = [{ local = \"files/link\" }]\n",
            "storage.files[0].append[0].local",
            (3, 21),
        ),
        (
            "[[passwd.users]]\nname = \"core\"\nssh_authorized_keys_local = [\"files/link\"]\n",
            "passwd.users[0].ssh_authorized_keys_local[0]",
            (3, 30),
        ),
        (
            "[[systemd.units]]\nname = \"a.service\"\ncontents_local = \"files/link\"\n",
            "systemd.units[0].contents_local",
            (3, 18),
        ),
        (
            "[[storage.trees]]\nlocal = \"files/linkdir\"\npath = \"/etc\"\n",
            "storage.trees[0].local",
            (2, 9),
        ),
        (
            "[[storage.files]]\npath = \"/etc/x\"\ncontents.local = \"files/sub/../../outside/shadow\"\n",
            "storage.files[0].contents.local",
            (3, 18),
        ),
    ];
    for (toml, key, pos) in cases {
        let (_d, r) = build_in(toml, |d| {
            let secret = outside_secret(d);
            std::fs::create_dir_all(d.join("files/sub")).unwrap();
            symlink(&secret, d.join("files/link")).unwrap();
            symlink(secret.parent().unwrap(), d.join("files/linkdir")).unwrap();
        });
        if let Ok(json) = &r {
            assert!(!json.contains(SECRET), "{toml}: the host file leaked");
        }
        let e = input_err(r);
        assert!(e.file.ends_with("c.toml"), "{e}");
        assert_eq!(e.key, *key, "{e}");
        assert_eq!(e.pos, Some(*pos), "{e}");
        assert!(
            e.message.contains("outside the files directory") || e.message.contains("'..'"),
            "{e}"
        );
    }
    // A symlink that stays inside the files directory is fine.
    let (_d, r) = build_in(
        "[[storage.files]]\npath = \"/etc/x\"\ncontents.local = \"files/in\"\n",
        |d| {
            std::fs::create_dir_all(d.join("files")).unwrap();
            std::fs::write(d.join("files/real"), "inside").unwrap();
            symlink("real", d.join("files/in")).unwrap();
        },
    );
    assert!(r.unwrap().contains("inside"));
}

#[test]
fn tree_symlinks_become_links_and_may_not_leave_the_tree() {
    use std::os::unix::fs::symlink;
    let toml = "[[storage.trees]]\nlocal = \"tree\"\npath = \"/opt/t\"\n";
    for (name, target) in [
        ("abs", "/etc/shadow"),
        ("up", "../outside/shadow"),
        ("deep", "sub/../../x"),
    ] {
        let (_d, r) = build_in(toml, |d| {
            outside_secret(d);
            std::fs::create_dir_all(d.join("tree/sub")).unwrap();
            std::fs::write(d.join("tree/sub/f"), "f").unwrap();
            symlink(target, d.join("tree").join(name)).unwrap();
        });
        if let Ok(json) = &r {
            assert!(!json.contains(SECRET), "{name}: the host file leaked");
        }
        let e = input_err(r);
        assert_eq!(
            (e.key.as_str(), e.pos),
            ("storage.trees[0].local", Some((2, 9))),
            "{e}"
        );
        assert!(e.message.contains("outside the tree"), "{e}");
    }
    // Links inside the tree (also from a subdirectory upwards) are kept as links; a
    // symlinked directory is not descended into.
    let (_d, r) = build_in(toml, |d| {
        std::fs::create_dir_all(d.join("tree/sub")).unwrap();
        std::fs::write(d.join("tree/sub/f"), "f").unwrap();
        symlink("sub/f", d.join("tree/a")).unwrap();
        symlink("../a", d.join("tree/sub/b")).unwrap();
        symlink("sub", d.join("tree/dirlink")).unwrap();
    });
    let json = r.unwrap();
    let (Config::V3_3(cfg), _) = Config::parse_str(&json).unwrap() else {
        panic!()
    };
    let st = cfg.storage.unwrap();
    let links = st.links.unwrap();
    let l = |p: &str| {
        links
            .iter()
            .find(|l| l.path == p)
            .and_then(|l| l.target.clone())
    };
    assert_eq!(l("/opt/t/a").as_deref(), Some("sub/f"));
    assert_eq!(l("/opt/t/sub/b").as_deref(), Some("../a"));
    assert_eq!(l("/opt/t/dirlink").as_deref(), Some("sub"));
    assert_eq!(st.files.unwrap().len(), 1);
}

#[test]
fn fifos_and_sockets_are_refused_without_blocking() {
    // A FIFO as contents.local.
    let (_d, r) = build_in(
        "[[storage.files]]\npath = \"/etc/x\"\ncontents.local = \"fifo\"\n",
        |d| mkfifo(&d.join("fifo")),
    );
    let e = input_err(r);
    assert_eq!(e.key, "storage.files[0].contents.local", "{e}");
    assert_eq!(e.pos, Some((3, 18)), "{e}");
    assert!(e.message.contains("FIFO"), "{e}");
    // A FIFO as a unit file and as a key file.
    let (_d, r) = build_in(
        "[[systemd.units]]\nname = \"a.service\"\ncontents_local = \"fifo\"\n",
        |d| mkfifo(&d.join("fifo")),
    );
    assert!(input_err(r).message.contains("FIFO"));
    let (_d, r) = build_in(
        "[[passwd.users]]\nname = \"core\"\nssh_authorized_keys_local = [\"fifo\"]\n",
        |d| mkfifo(&d.join("fifo")),
    );
    assert!(input_err(r).message.contains("FIFO"));
    // A FIFO and a socket inside a tree; a character device as contents.
    let (_d, r) = build_in("[[storage.trees]]\nlocal = \"tree\"\n", |d| {
        std::fs::create_dir_all(d.join("tree")).unwrap();
        std::fs::write(d.join("tree/a"), "a").unwrap();
        mkfifo(&d.join("tree/fifo"));
    });
    let e = input_err(r);
    assert_eq!(e.key, "storage.trees[0].local", "{e}");
    assert!(e.message.contains("fifo in the tree is a FIFO"), "{e}");
    let (_d, r) = build_in("[[storage.trees]]\nlocal = \"tree\"\n", |d| {
        std::fs::create_dir_all(d.join("tree")).unwrap();
        std::os::unix::net::UnixListener::bind(d.join("tree/sock")).unwrap();
    });
    assert!(input_err(r).message.contains("a socket"));
    let (_d, r) = build_in(
        "[[storage.files]]\npath = \"/etc/x\"\ncontents.local = \"null\"\n",
        |d| std::os::unix::fs::symlink("/dev/null", d.join("null")).unwrap(),
    );
    // /dev/null is outside the files directory, and a device anyway.
    assert!(input_err(r).message.contains("outside the files directory"));
}

fn kiln(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn build_output_is_private_and_a_directory_output_is_refused_cleanly() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[[passwd.users]]\nname = \"core\"\npassword_hash = \"$y$j9T$secret\"\n",
    )
    .unwrap();
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    for o in [
        outdir.clone(),
        PathBuf::from(format!("{}/", outdir.display())),
    ] {
        let r = kiln(&[
            "ignition".as_ref(),
            "build".as_ref(),
            cfg.as_os_str(),
            "-o".as_ref(),
            o.as_os_str(),
        ]);
        assert_eq!(r.status.code(), Some(2), "{r:?}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains("is a directory"), "{err}");
        // Nothing written anywhere: not in the directory, not beside it.
        assert_eq!(std::fs::read_dir(&outdir).unwrap().count(), 0);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["c.toml", "out"], "leftovers");
    }
    // A file output is 0600 whatever the umask.
    let out = dir.path().join("c.ign");
    let r = kiln(&[
        "ignition".as_ref(),
        "build".as_ref(),
        cfg.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert!(r.status.success(), "{r:?}");
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(std::fs::read_to_string(&out).unwrap().contains("secret"));
    // Replacing an existing world-readable file gives a 0600 one.
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = kiln(&[
        "ignition".as_ref(),
        "build".as_ref(),
        cfg.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert!(r.status.success());
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// Values Ignition's own validation accepts but that fail at first boot (or are not what
/// was meant) are refused at build time, each at its file, key and line.
#[test]
fn values_are_checked_at_the_door_with_file_key_and_line() {
    let u = "[[passwd.users]]\n";
    let f = "[[storage.files]]\npath = \"/etc/x\"\n";
    let cases: Vec<(String, &str, (usize, usize), &str)> = vec![
        (format!("{u}name = \"bad name\"\n"), "passwd.users[0].name", (2, 8), "not a valid user or group name"),
        (format!("{u}name = \"1x\"\n"), "passwd.users[0].name", (2, 8), "not a valid user or group name"),
        (format!("{u}name = \"core\"\nuid = -1\n"), "passwd.users[0].uid", (3, 7), "not a valid user or group id"),
        (format!("{u}name = \"core\"\nuid = 4294967296\n"), "passwd.users[0].uid", (3, 7), "not a valid user or group id"),
        (format!("{u}name = \"core\"\ngroups = [\"wheel\", \"a:b\"]\n"), "passwd.users[0].groups[1]", (3, 20), "not a valid user or group name"),
        (format!("{u}name = \"core\"\nprimary_group = \"\"\n"), "passwd.users[0].primary_group", (3, 17), "not a valid"),
        (format!("{u}name = \"core\"\nhome_dir = \"home/core\"\n"), "passwd.users[0].home_dir", (3, 12), "not an absolute path"),
        (format!("{u}name = \"core\"\nshell = \"/bin//bash\"\n"), "passwd.users[0].shell", (3, 9), "not normalized"),
        ("[[passwd.groups]]\nname = \"g\"\ngid = 65535\n".into(), "passwd.groups[0].gid", (3, 7), "except 65535"),
        (format!("{f}user.name = \"no body\"\n"), "storage.files[0].user.name", (3, 13), "not a valid user or group name"),
        (format!("{f}group.id = -5\n"), "storage.files[0].group.id", (3, 12), "not a valid user or group id"),
        (format!("{f}contents.source = \"https://h:99999/x\"\n"), "storage.files[0].contents.source", (3, 19), "invalid port"),
        (format!("{f}contents.source = \"http:///x\"\n"), "storage.files[0].contents.source", (3, 19), "no host"),
        ("[ignition.proxy]\nhttp_proxy = \"proxy:3128\"\n".into(), "ignition.proxy.http_proxy", (2, 14), "not a URL"),
        ("[ignition.timeouts]\nhttp_total = -1\n".into(), "ignition.timeouts.http_total", (2, 14), "negative"),
        ("[[storage.directories]]\npath = \"/var/x/\"\n".into(), "storage.directories[0].path", (2, 8), "not normalized"),
        ("[[storage.trees]]\nlocal = \"t\"\npath = \"/opt/../etc\"\n".into(), "storage.trees[0].path", (3, 8), "not normalized"),
        ("[[storage.disks]]\ndevice = \"/dev/vdb\"\npartitions = [{ number = 200 }]\n".into(), "storage.disks[0].partitions[0].number", (3, 26), "1-128"),
        ("[[storage.disks]]\ndevice = \"/dev/vdb\"\npartitions = [{ number = 1, size_mib = -4 }]\n".into(), "storage.disks[0].partitions[0].size_mib", (3, 40), "negative"),
        ("[[storage.disks]]\ndevice = \"/dev/vdb\"\npartitions = [{ label = \"a:b\" }]\n".into(), "storage.disks[0].partitions[0].label", (3, 25), "':'"),
        ("[[storage.luks]]\nname = \"d\"\ndevice = \"/dev/vdb\"\nclevis.tang = [{ url = \"tang.example\", thumbprint = \"x\" }]\n".into(), "storage.luks[0].clevis.tang[0].url", (4, 24), "not a URL"),
        ("[[systemd.units]]\nname = \"../../etc/evil.service\"\n".into(), "systemd.units[0].name", (2, 8), "not allowed"),
        ("[[systemd.units]]\nname = \"a.service\"\n[[systemd.units.dropins]]\nname = \"../x.conf\"\ncontents = \"\"\n".into(), "systemd.units[0].dropins[0].name", (4, 8), "plain file name"),
        ("[kernel_arguments]\nshould_exist = [\"ok\", \"ostree=/x\"]\n".into(), "kernel_arguments.should_exist[1]", (2, 23), "managed by kiln"),
        ("[kernel_arguments]\nshould_not_exist = [\"a b\"]\n".into(), "kernel_arguments.should_not_exist[0]", (2, 21), "whitespace"),
    ];
    for (toml, key, pos, msg) in cases {
        let e = build_err(&toml, &[]);
        assert_eq!(e.key, key, "{toml}\n{e}");
        assert_eq!(e.pos, Some(pos), "{toml}\n{e}");
        assert!(e.message.contains(msg), "{toml}\n{e}");
    }
}

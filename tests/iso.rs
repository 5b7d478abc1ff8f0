//! `kiln iso` commands without booting anything: bad input (a file that is not a kiln live
//! ISO, a broken Ignition config) is refused with exit code 2 and a message naming it.
//! The live media themselves boot under QEMU in tests/vm_iso.rs.

mod common;

use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn iso_commands_refuse_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let not_iso = d.path().join("x.iso");
    std::fs::write(&not_iso, vec![0u8; 65536]).unwrap();
    let (code, _, err) = common::kiln(&["iso", "kargs", "show", s(&not_iso)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a kiln live ISO"), "{err}");
    let bad = d.path().join("bad.ign");
    std::fs::write(&bad, "{\"ignition\":").unwrap();
    let (code, _, err) = common::kiln(&[
        "iso",
        "ignition",
        "embed",
        "--ignition",
        s(&bad),
        s(&not_iso),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.ign"), "{err}");
}

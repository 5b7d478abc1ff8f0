//! Reading an initramfs as dracut writes it: newc cpio archives, concatenated, the last
//! one possibly compressed (gzip, zstd, xz, lz4), unpacked with the host's tools.

use std::collections::BTreeMap;
use std::io::Write;

/// Every entry of the image by name, with its data (empty for directories; a symlink's
/// target).
pub fn files(data: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut off = 0;
    while off + 6 <= data.len() {
        if data[off] == 0 {
            off += 1; // padding between archives
            continue;
        }
        if &data[off..off + 6] != b"070701" {
            out.extend(files(&decompress(&data[off..])));
            return out;
        }
        let hex = |a: usize| {
            usize::from_str_radix(
                std::str::from_utf8(&data[off + a..off + a + 8]).unwrap(),
                16,
            )
            .unwrap()
        };
        let filesize = hex(54);
        let namesize = hex(94);
        let name_start = off + 110;
        let name =
            String::from_utf8_lossy(&data[name_start..name_start + namesize - 1]).into_owned();
        let data_start = (name_start + namesize + 3) & !3;
        off = (data_start + filesize + 3) & !3;
        if name != "TRAILER!!!" {
            out.insert(name, data[data_start..data_start + filesize].to_vec());
        }
    }
    out
}

/// Entry names only.
pub fn names(data: &[u8]) -> Vec<String> {
    files(data).into_keys().collect()
}

fn decompress(tail: &[u8]) -> Vec<u8> {
    let tool: &[&str] = match tail.get(..4) {
        Some([0x1f, 0x8b, ..]) => &["gzip", "-dc"],
        Some([0x28, 0xb5, 0x2f, 0xfd]) => &["zstd", "-dc"],
        Some([0xfd, 0x37, 0x7a, 0x58]) => &["xz", "-dc"],
        Some([0x02, 0x21, 0x4c, 0x18]) => &["lz4", "-dc"],
        other => panic!("unknown initramfs segment: {other:02x?}"),
    };
    let mut child = std::process::Command::new(tool[0])
        .args(&tool[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let tail = tail.to_vec();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&tail);
    });
    let out = child.wait_with_output().unwrap();
    w.join().unwrap();
    assert!(out.status.success(), "{} failed", tool[0]);
    out.stdout
}

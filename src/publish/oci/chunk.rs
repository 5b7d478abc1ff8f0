//! Splitting a commit's content into layers by package, so that a one-package update
//! changes few layers. Ownership comes from the tree's own dpkg database
//! (`usr/lib/sysimage/dpkg`: `info/*.list` and `status`); packages built from one source
//! package change together and share a layer. The biggest groups get a layer each; the
//! rest go to a fixed number of bins by a hash of their name, so adding or removing a
//! package never moves the others. Files no package owns are split by where they live
//! (initramfs, the dpkg database, the rest).

use std::collections::{BTreeMap, HashMap};

/// Every content object of a commit, in tree order, with its size and paths.
#[derive(Debug, Default)]
pub struct Content {
    pub order: Vec<String>,
    pub objects: HashMap<String, (u64, Vec<String>)>,
}

impl Content {
    pub fn add(&mut self, checksum: &str, size: u64, path: String) {
        match self.objects.get_mut(checksum) {
            Some(o) => o.1.push(path),
            None => {
                self.order.push(checksum.to_string());
                self.objects
                    .insert(checksum.to_string(), (size, vec![path]));
            }
        }
    }
}

/// One layer's worth of content.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    pub name: String,
    pub components: Vec<String>,
    pub objects: Vec<String>,
    pub size: u64,
}

/// Where dpkg's database lives in a kiln tree.
pub const DPKG_DB: &str = "usr/lib/sysimage/dpkg";

/// A dpkg path (`/bin/sh`, `/etc/x`) as a path in the commit (`usr/bin/sh`, `usr/etc/x`).
pub fn tree_path(dpkg: &str) -> String {
    let p = dpkg.trim_start_matches('/');
    let (first, rest) = p.split_once('/').unwrap_or((p, ""));
    let mapped = match first {
        "bin" | "sbin" | "lib" | "lib32" | "lib64" | "libx32" | "etc" => format!("usr/{first}"),
        _ => first.to_string(),
    };
    if rest.is_empty() {
        mapped
    } else {
        format!("{mapped}/{rest}")
    }
}

/// Package → source package, from a dpkg `status` file.
pub fn sources(status: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for stanza in status.split("\n\n") {
        let mut pkg = None;
        let mut src = None;
        for l in stanza.lines() {
            if let Some(v) = l.strip_prefix("Package: ") {
                pkg = Some(v.trim().to_string());
            } else if let Some(v) = l.strip_prefix("Source: ") {
                src = v.split_whitespace().next().map(String::from);
            }
        }
        if let Some(p) = pkg {
            let s = src.unwrap_or_else(|| p.clone());
            out.insert(p, s);
        }
    }
    out
}

fn unowned_group(path: &str) -> &'static str {
    if path.starts_with("usr/lib/modules/") {
        "(initramfs)"
    } else if path.starts_with(DPKG_DB) {
        "(dpkg database)"
    } else {
        "(unpackaged)"
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Splits `content` into at most `max_layers` chunks (≥ 4). `owners`: tree path → package;
/// `src`: package → source package.
pub fn split(
    content: &Content,
    owners: &HashMap<String, String>,
    src: &HashMap<String, String>,
    max_layers: usize,
) -> Vec<Chunk> {
    let max_layers = max_layers.max(4);
    // Component (source package or unowned group) of every object.
    let mut groups: BTreeMap<String, Chunk> = BTreeMap::new();
    for c in &content.order {
        let (size, paths) = &content.objects[c];
        let owner = paths.iter().find_map(|p| owners.get(p));
        let (comp, pkg) = match owner {
            Some(p) => (
                src.get(p).cloned().unwrap_or_else(|| p.clone()),
                Some(p.clone()),
            ),
            None => (unowned_group(&paths[0]).to_string(), None),
        };
        let g = groups.entry(comp.clone()).or_insert_with(|| Chunk {
            name: comp.clone(),
            ..Default::default()
        });
        g.objects.push(c.clone());
        g.size += size;
        if let Some(p) = pkg {
            if !g.components.contains(&p) {
                g.components.push(p);
            }
        }
    }
    let bins = (max_layers / 4).clamp(1, 16);
    let own = max_layers - 1 - bins;
    let mut by_size: Vec<Chunk> = groups.into_values().collect();
    by_size.sort_by(|a, b| b.size.cmp(&a.size).then(a.name.cmp(&b.name)));
    let mut out: Vec<Chunk> = Vec::new();
    let mut binned: Vec<Chunk> = (0..bins)
        .map(|i| Chunk {
            name: format!("packages (bin {i})"),
            ..Default::default()
        })
        .collect();
    for (i, g) in by_size.into_iter().enumerate() {
        if i < own || g.name.starts_with('(') {
            out.push(g);
        } else {
            let b = &mut binned[(fnv(&g.name) % bins as u64) as usize];
            b.objects.extend(g.objects);
            b.components.extend(g.components);
            b.size += g.size;
        }
    }
    out.extend(binned.into_iter().filter(|b| !b.objects.is_empty()));
    for c in &mut out {
        c.components.sort();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_paths_map_into_the_tree() {
        assert_eq!(tree_path("/bin/sh"), "usr/bin/sh");
        assert_eq!(tree_path("/etc/default/x"), "usr/etc/default/x");
        assert_eq!(tree_path("/usr/share/doc"), "usr/share/doc");
        assert_eq!(tree_path("/lib64"), "usr/lib64");
    }

    #[test]
    fn one_package_moves_only_its_layer() {
        let mut content = Content::default();
        let mut owners = HashMap::new();
        for i in 0..200 {
            let c = format!("{i:064}");
            content.add(&c, 1000 + i, format!("usr/share/p{i}/f"));
            owners.insert(format!("usr/share/p{i}/f"), format!("p{i}"));
        }
        content.add(&"f".repeat(64), 5, "usr/lib/modules/k/initramfs.img".into());
        let src: HashMap<_, _> = [("p1".to_string(), "p0".to_string())].into();
        let chunks = split(&content, &owners, &src, 20);
        assert!(chunks.len() <= 20, "{}", chunks.len());
        let all: usize = chunks.iter().map(|c| c.objects.len()).sum();
        assert_eq!(all, 201);
        let p0 = chunks
            .iter()
            .find(|c| c.components.contains(&"p0".to_string()))
            .unwrap();
        assert!(
            p0.components.contains(&"p1".to_string()),
            "same source, same layer"
        );
        assert!(chunks.iter().any(|c| c.name == "(initramfs)"));
        // Splitting again without one package keeps every other package's layer.
        owners.remove("usr/share/p150/f");
        let again = split(&content, &owners, &src, 20);
        let key = |cs: &[Chunk], p: &str| {
            cs.iter()
                .position(|c| c.components.contains(&p.to_string()))
                .map(|i| cs[i].name.clone())
        };
        assert_eq!(key(&chunks, "p199"), key(&again, "p199"));
    }
}

//! JSON paths in Ignition's notation (`$.storage.files.0.path`) and where they point.

use crate::ignition::json::Node;

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Idx(usize),
}

#[derive(Debug, Clone)]
pub(super) struct P(Vec<Seg>);

impl P {
    pub(super) fn root() -> P {
        P(Vec::new())
    }
    pub(super) fn k(&self, key: &str) -> P {
        let mut p = self.clone();
        p.0.push(Seg::Key(key.to_string()));
        p
    }
    pub(super) fn i(&self, idx: usize) -> P {
        let mut p = self.clone();
        p.0.push(Seg::Idx(idx));
        p
    }
    pub(super) fn render(&self) -> String {
        let mut s = String::from("$");
        for seg in &self.0 {
            match seg {
                Seg::Key(k) => {
                    s.push('.');
                    s.push_str(k);
                }
                Seg::Idx(i) => {
                    s.push('.');
                    s.push_str(&i.to_string());
                }
            }
        }
        s
    }
}

/// Offset of the deepest node that exists along `path`.
pub(super) fn locate(root: &Node, path: &P) -> usize {
    let mut n = root;
    for seg in &path.0 {
        let next = match seg {
            Seg::Key(k) => n.get(k),
            Seg::Idx(i) => n.as_array().get(*i),
        };
        match next {
            Some(x) => n = x,
            None => break,
        }
    }
    n.pos
}

//! The glob language of `remove-files`, so that what a recipe says and what compose removes
//! agree exactly (docs/recipes.md, "remove-files globs").
//!
//! A pattern and a path are both relative to the tree root and split at `/`; each pattern
//! segment matches one path segment, except `**`, which matches zero or more whole
//! segments. Within a segment: `*` matches any run of characters, `?` one character,
//! `[abc]`, `[a-z]` one character of the class, `[!a-z]` / `[^a-z]` one character not in
//! it; every other character matches itself. A leading `./` and empty segments (`a//b`) are
//! ignored. Names starting with `.` are matched by `*` like any other name.

/// Whether `pattern` (a checked `remove-files` entry) matches the tree-relative `path`.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = segments(pattern);
    let p: Vec<&str> = segments(path);
    match_segments(&pat, &p)
}

fn segments(s: &str) -> Vec<&str> {
    s.split('/')
        .filter(|x| !x.is_empty() && *x != ".")
        .collect()
}

fn match_segments(pat: &[&str], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| match_segments(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((seg, prest)) => {
                let pc: Vec<char> = first.chars().collect();
                let sc: Vec<char> = seg.chars().collect();
                match_segment(&pc, &sc) && match_segments(rest, prest)
            }
            None => false,
        },
    }
}

/// One path segment against one pattern segment (`*`, `?`, `[...]`).
fn match_segment(pat: &[char], s: &[char]) -> bool {
    match pat.first() {
        None => s.is_empty(),
        Some('*') => (0..=s.len()).any(|i| match_segment(&pat[1..], &s[i..])),
        Some('?') => !s.is_empty() && match_segment(&pat[1..], &s[1..]),
        Some('[') => {
            let Some(c) = s.first() else { return false };
            match class(&pat[1..], *c) {
                Some((hit, used)) => hit && match_segment(&pat[1 + used..], &s[1..]),
                // No closing bracket: a literal '['.
                None => *c == '[' && match_segment(&pat[1..], &s[1..]),
            }
        }
        Some(p) => s.first() == Some(p) && match_segment(&pat[1..], &s[1..]),
    }
}

/// Matches `c` against the class starting after `[`; returns (matched, chars used
/// including the closing `]`).
fn class(pat: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 0;
    let negate = matches!(pat.first(), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    while i < pat.len() {
        let ch = pat[i];
        if ch == ']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if i + 2 < pat.len() && pat[i + 1] == '-' && pat[i + 2] != ']' {
            if pat[i] <= c && c <= pat[i + 2] {
                hit = true;
            }
            i += 3;
        } else {
            if ch == c {
                hit = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn stars_and_double_stars() {
        assert!(matches("usr/share/man/**", "usr/share/man"));
        assert!(matches("usr/share/man/**", "usr/share/man/man1/ls.1.gz"));
        assert!(!matches("usr/share/man/**", "usr/share/manx"));
        assert!(matches(
            "usr/share/doc/*/changelog*",
            "usr/share/doc/bash/changelog.Debian.gz"
        ));
        assert!(!matches(
            "usr/share/doc/*/changelog*",
            "usr/share/doc/a/b/changelog"
        ));
        assert!(matches("**/*.pyc", "usr/lib/python3/x.pyc"));
        assert!(matches("**/*.pyc", "x.pyc"));
        assert!(matches("etc/*.conf", "etc/.hidden.conf"));
        assert!(matches("./etc//motd", "etc/motd"));
        assert!(!matches("etc/motd", "etc/motd/x"));
    }

    #[test]
    fn classes_and_question_marks() {
        assert!(matches("var/log/*.[0-9]", "var/log/syslog.1"));
        assert!(!matches("var/log/*.[0-9]", "var/log/syslog.gz"));
        assert!(matches("var/log/*.[!0-9]*", "var/log/syslog.gz"));
        assert!(matches("var/log/*.[^0-9]*", "var/log/syslog.gz"));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "ac"));
        assert!(matches("[]x]", "]"));
        assert!(matches("a[-z]", "a-"));
    }
}

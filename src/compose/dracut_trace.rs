//! What a program run in the tree touched, read from `strace -f -y` output (strace started
//! inside the chroot's PID namespace, [`super::chroot::traced`]): every path it opened, stat'ed, executed, looked for (also when missing), every
//! directory it listed, and every path it wrote.
//!
//! Paths are the tree's own (`/usr/lib/…`). A process's root is tracked from `chroot()`
//! and inherited through `clone`/`fork`: only processes whose root is the tree count (the
//! setup before the chroot runs on the host; dracut's own nested chroot into its temporary
//! image is not the tree). Relative paths are resolved with the directory strace decoded
//! for the dirfd (`AT_FDCWD</host/cwd>`) or, for the old non-`at` calls, the process's
//! current directory. A line that cannot be understood makes the whole trace unusable:
//! the caller then keeps no record, so nothing is ever reused on a partial view.

use anyhow::{bail, Result};
use std::collections::{BTreeSet, HashMap};

/// strace's options for a trace this module reads (before `-o FILE` and the command).
/// `--seccomp-bpf` stops dracut only at the calls traced; no `--decode-pids=pidns`: strace
/// runs in the traced PID namespace, and translating every pid through `/proc` cost
/// about as much as dracut's own work.
pub const STRACE_ARGS: &[&str] = &[
    "-f",
    "-q",
    "--seccomp-bpf",
    "-y",
    "-e",
    "trace=%file,getdents64,fchdir,clone,clone3,fork,vfork",
    "-e",
    "signal=none",
];

/// What the traced run touched in the tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    /// Paths looked up (any outcome), as the program named them, tree-absolute.
    pub paths: BTreeSet<String>,
    /// Directories whose entries were read (`getdents64`).
    pub listed: BTreeSet<String>,
    /// Paths created, changed or removed.
    pub written: BTreeSet<String>,
    /// Paths passed to a successful `execve`.
    pub executed: BTreeSet<String>,
}

/// Where a process's root is.
#[derive(Debug, Clone, PartialEq)]
enum Root {
    Host,
    Tree,
    Elsewhere,
}

#[derive(Debug, Clone)]
struct Proc {
    root: Root,
    /// Current directory, host-absolute when known.
    cwd: Option<String>,
}

/// The parser's state: processes by (strace's) pid, lines held for processes whose parent
/// has not returned from `clone` yet, and half-printed calls.
struct Parser<'a> {
    tree: &'a str,
    procs: HashMap<u32, Proc>,
    held: HashMap<u32, Vec<String>>,
    unfinished: HashMap<u32, String>,
    out: Touched,
}

/// Parses a whole trace. `tree` is the tree's canonical host path; `first_pid` is not
/// needed: the first line's process is the traced command, rooted at the host.
pub fn parse(trace: &str, tree: &str) -> Result<Touched> {
    let tree = tree.trim_end_matches('/');
    let mut p = Parser {
        tree,
        procs: HashMap::new(),
        held: HashMap::new(),
        unfinished: HashMap::new(),
        out: Touched::default(),
    };
    let mut first = true;
    for line in trace.lines() {
        let Some((pid, rest)) = split_pid(line) else {
            if line.trim().is_empty() {
                continue;
            }
            bail!("unexpected trace line: {line}");
        };
        if first {
            p.procs.insert(
                pid,
                Proc {
                    root: Root::Host,
                    cwd: None,
                },
            );
            first = false;
        }
        p.line(pid, rest.to_string())?;
    }
    if let Some((pid, _)) = p.held.iter().find(|(_, v)| !v.is_empty()) {
        bail!("process {pid} in the trace has no known parent");
    }
    Ok(p.out)
}

fn split_pid(line: &str) -> Option<(u32, &str)> {
    let (a, b) = line.split_once(' ')?;
    Some((a.parse().ok()?, b.trim_start()))
}

impl Parser<'_> {
    fn line(&mut self, pid: u32, rest: String) -> Result<()> {
        let call = if let Some(head) = rest.strip_suffix("<unfinished ...>") {
            self.unfinished.insert(pid, head.to_string());
            return Ok(());
        } else if let Some(tail) = rest.strip_prefix("<... ") {
            let (_, after) = tail
                .split_once(" resumed>")
                .ok_or_else(|| anyhow::anyhow!("bad resumed line: {rest}"))?;
            let head = self.unfinished.remove(&pid).unwrap_or_default();
            format!("{head}{after}")
        } else {
            rest
        };
        if !self.procs.contains_key(&pid) {
            self.held.entry(pid).or_default().push(call);
            return Ok(());
        }
        self.call(pid, &call)
    }

    fn call(&mut self, pid: u32, call: &str) -> Result<()> {
        if call.starts_with("+++") {
            // Exited or killed: the pid may be reused by a later process.
            self.procs.remove(&pid);
            return Ok(());
        }
        if call.starts_with("---") {
            return Ok(());
        }
        let Some((name, args, ret)) = split_call(call) else {
            bail!("unexpected trace line: {call}");
        };
        let args = split_args(args);
        let ok = ret
            .trim_start()
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit());
        match name {
            "clone" | "clone3" | "fork" | "vfork" => return self.child(pid, ret),
            // No path in, the current directory out (known from chdir and the decodes).
            "getcwd" => return Ok(()),
            _ => {}
        }
        let me = self.procs.get(&pid).cloned().expect("known process");
        // The directory strace decoded for a dirfd-relative call is the ground truth for
        // the process's current directory.
        if let Some(d) = args.first().and_then(|a| a.strip_prefix("AT_FDCWD<")) {
            if let Some(cwd) = d.strip_suffix('>') {
                self.procs.get_mut(&pid).expect("known").cwd = Some(unescape(cwd));
            }
        }
        match name {
            "chroot" => {
                if ok {
                    let host = self.host_path(&me, None, &arg_str(&args, 0)?);
                    let root = if me.root != Root::Host {
                        Root::Elsewhere
                    } else if host.trim_end_matches('/') == self.tree {
                        Root::Tree
                    } else {
                        Root::Elsewhere
                    };
                    self.procs.get_mut(&pid).expect("known").root = root;
                }
                return Ok(());
            }
            "chdir" if ok => {
                let h = self.host_path(&me, None, &arg_str(&args, 0)?);
                self.procs.get_mut(&pid).expect("known").cwd = Some(h);
            }
            "fchdir" => {
                if ok {
                    let d = fd_path(args.first().map(String::as_str).unwrap_or(""));
                    self.procs.get_mut(&pid).expect("known").cwd = d;
                }
                return Ok(());
            }
            _ => {}
        }
        if me.root != Root::Tree {
            return Ok(());
        }
        if name == "getdents64" {
            let host = fd_path(args.first().map(String::as_str).unwrap_or(""))
                .ok_or_else(|| anyhow::anyhow!("getdents64 without a decoded fd: {call}"))?;
            if let Some(t) = self.tree_rel(&host)? {
                self.out.listed.insert(t.clone());
                self.out.paths.insert(t);
            }
            return Ok(());
        }
        let Some(spec) = path_args(name) else {
            bail!("a traced call kiln does not know: {call}");
        };
        let write = spec.write
            || (matches!(name, "open" | "openat" | "openat2")
                && ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"]
                    .iter()
                    .any(|f| args.iter().any(|a| a.contains(f))));
        for (dirfd, idx) in spec.paths {
            let Some(raw) = args.get(*idx) else { continue };
            if !raw.starts_with('"') {
                // NULL (utimensat on an fd) or an address strace could not read.
                continue;
            }
            let path = unescape(raw.trim_matches('"'));
            let dir = dirfd.and_then(|i| args.get(i)).map(String::as_str);
            let Some(t) = self.tree_path(&me, dir, &path)? else {
                continue;
            };
            // A failed call (mkdir -p on an existing directory) changed nothing.
            if write && ok {
                self.out.written.insert(t.clone());
            }
            if name == "execve" && ok {
                self.out.executed.insert(t.clone());
            }
            self.out.paths.insert(t);
        }
        Ok(())
    }

    /// A `clone`/`fork` returned: the child inherits root and cwd; its held lines run now.
    fn child(&mut self, pid: u32, ret: &str) -> Result<()> {
        // `= 1098`; `= 28 /* 1098 in strace's PID NS */` when strace runs outside the
        // traced PID namespace.
        let ret = ret.trim();
        let child = match ret.split_once("/* ") {
            Some((_, c)) => c.split_whitespace().next().unwrap_or(""),
            None => ret.split_whitespace().next().unwrap_or(""),
        };
        let Ok(child) = child.parse::<u32>() else {
            return Ok(()); // failed, or the child's side (returns 0)
        };
        if child == 0 {
            return Ok(());
        }
        let me = self.procs.get(&pid).cloned().expect("known process");
        self.procs.insert(child, me);
        for l in self.held.remove(&child).unwrap_or_default() {
            self.call(child, &l)?;
        }
        Ok(())
    }

    /// The host path a call names: absolute paths under the process's root, relative ones
    /// under the dirfd's decoded path or the current directory.
    fn host_path(&self, me: &Proc, dirfd: Option<&str>, path: &str) -> String {
        if path.starts_with('/') {
            return match me.root {
                Root::Tree => format!("{}{path}", self.tree),
                _ => path.to_string(),
            };
        }
        let base = dirfd.and_then(fd_path).or_else(|| me.cwd.clone());
        match base {
            Some(b) if path.is_empty() => b,
            Some(b) => format!("{}/{path}", b.trim_end_matches('/')),
            None => format!("?/{path}"),
        }
    }

    /// The tree path of a path a tree-rooted process named (`None` outside the tree).
    fn tree_path(&self, me: &Proc, dirfd: Option<&str>, path: &str) -> Result<Option<String>> {
        if path.starts_with('/') {
            return Ok(Some(path.to_string()));
        }
        let host = self.host_path(me, dirfd, path);
        self.tree_rel(&host)
    }

    fn tree_rel(&self, host: &str) -> Result<Option<String>> {
        if host == self.tree {
            return Ok(Some("/".into()));
        }
        if let Some(r) = host.strip_prefix(self.tree) {
            if r.starts_with('/') {
                return Ok(Some(r.to_string()));
            }
        }
        // A file descriptor inherited from outside the chroot (the log dracut writes
        // to), pipe:[…], socket:[…], anon_inode:…: not files of the tree. A process in
        // the tree cannot name a host path any other way.
        if host.starts_with('/') || host.contains(":[") || host.starts_with("anon_inode:") {
            return Ok(None);
        }
        bail!("a path in the trace could not be placed: {host}")
    }
}

/// Which arguments of a call are paths: (index of its dirfd, index of the path).
struct PathArgs {
    paths: &'static [(Option<usize>, usize)],
    write: bool,
}

fn path_args(name: &str) -> Option<PathArgs> {
    const P0: &[(Option<usize>, usize)] = &[(None, 0)];
    const P1: &[(Option<usize>, usize)] = &[(None, 1)];
    const P01: &[(Option<usize>, usize)] = &[(None, 0), (None, 1)];
    const AT: &[(Option<usize>, usize)] = &[(Some(0), 1)];
    const AT2: &[(Option<usize>, usize)] = &[(Some(0), 1), (Some(2), 3)];
    const SYMAT: &[(Option<usize>, usize)] = &[(Some(1), 2)];
    let (paths, write) = match name {
        "open" | "access" | "chdir" | "execve" | "stat" | "lstat" | "statfs" | "readlink"
        | "getxattr" | "lgetxattr" | "listxattr" | "llistxattr" | "uselib" => (P0, false),
        "creat" | "truncate" | "mkdir" | "rmdir" | "unlink" | "mknod" | "chmod" | "chown"
        | "lchown" | "utime" | "utimes" | "setxattr" | "lsetxattr" | "removexattr"
        | "lremovexattr" | "umount2" | "acct" | "swapon" | "swapoff" => (P0, true),
        "openat" | "openat2" | "newfstatat" | "statx" | "faccessat" | "faccessat2"
        | "readlinkat" | "execveat" | "name_to_handle_at" | "open_tree" => (AT, false),
        "mkdirat" | "mknodat" | "unlinkat" | "fchmodat" | "fchownat" | "utimensat"
        | "futimesat" => (AT, true),
        "rename" | "link" | "pivot_root" => (P01, true),
        "symlink" | "mount" => (P1, true),
        "inotify_add_watch" | "quotactl" => (P1, false),
        "renameat" | "renameat2" | "linkat" => (AT2, true),
        "symlinkat" => (SYMAT, true),
        _ => return None,
    };
    Some(PathArgs { paths, write })
}

/// `name(args) = ret` → its parts; `args` is everything between the outer parentheses.
fn split_call(call: &str) -> Option<(&str, &str, &str)> {
    let open = call.find('(')?;
    let name = &call[..open];
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    // The last `)` followed by (padding and) `=`: strace aligns the return value.
    let close = call
        .match_indices(')')
        .map(|(i, _)| i)
        .rev()
        .find(|&i| call[i + 1..].trim_start().starts_with('='))?;
    let ret = call[close + 1..].trim_start().strip_prefix('=')?;
    Some((name, &call[open + 1..close], ret))
}

/// Top-level arguments: commas inside strings, `[]`, `{}`, `()` and `<…>` decodes do not
/// split.
fn split_args(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0i32;
    let mut in_str = false;
    let mut esc = false;
    let mut in_decode = false;
    for c in args.chars() {
        if in_str {
            cur.push(c);
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        if in_decode {
            cur.push(c);
            if c == '>' {
                in_decode = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                cur.push(c);
            }
            '<' => {
                in_decode = true;
                cur.push(c);
            }
            '[' | '{' | '(' => {
                depth += 1;
                cur.push(c);
            }
            ']' | '}' | ')' => {
                depth -= 1;
                cur.push(c);
            }
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

fn arg_str(args: &[String], i: usize) -> Result<String> {
    match args.get(i) {
        Some(a) if a.starts_with('"') => Ok(unescape(a.trim_matches('"'))),
        _ => bail!("expected a path argument at position {i}"),
    }
}

/// The path strace decoded for an fd argument: `3</usr/lib>` or `AT_FDCWD</root>`.
fn fd_path(arg: &str) -> Option<String> {
    let start = arg.find('<')?;
    let inner = arg[start + 1..].strip_suffix('>')?;
    Some(unescape(inner))
}

/// strace's C-style escapes (`\"`, `\\`, `\n`, `\t`, `\ooo`, `\xNN`) back to bytes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 >= b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let c = b[i + 1];
        match c {
            b'n' => (out.push(b'\n'), i += 2).1,
            b't' => (out.push(b'\t'), i += 2).1,
            b'r' => (out.push(b'\r'), i += 2).1,
            b'v' => (out.push(0x0b), i += 2).1,
            b'f' => (out.push(0x0c), i += 2).1,
            b'x' => {
                let h = std::str::from_utf8(&b[i + 2..(i + 4).min(b.len())]).unwrap_or("");
                out.push(u8::from_str_radix(h, 16).unwrap_or(b'?'));
                i += 4;
            }
            b'0'..=b'7' => {
                let mut n = 0u32;
                let mut j = i + 1;
                while j < b.len() && j < i + 4 && (b'0'..=b'7').contains(&b[j]) {
                    n = n * 8 + u32::from(b[j] - b'0');
                    j += 1;
                }
                out.push(n as u8);
                i = j;
            }
            _ => {
                out.push(c);
                i += 2;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "/c/work/t";

    #[test]
    fn follows_roots_children_and_relative_paths() {
        let trace = format!(
            r#"10 execve("/usr/bin/unshare", ["unshare"], 0x0 /* 1 var */) = 0
10 openat(AT_FDCWD</w>, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3</etc/ld.so.cache>
10 clone(child_stack=NULL, flags=SIGCHLD <unfinished ...>
11 chroot("{T}") = 0
10 <... clone resumed>, child_tidptr=0x1) = 11
11 chdir("/") = 0
11 execve("/usr/bin/dracut", ["dracut", "a, b"], 0x1 /* 4 vars */) = 0
11 newfstatat(AT_FDCWD<{T}>, "/usr/sbin/nope", 0x7ff, 0) = -1 ENOENT (No such file or directory)
11 openat(AT_FDCWD<{T}>, "usr/lib/dracut/modules.d", O_RDONLY|O_DIRECTORY) = 3<{T}/usr/lib/dracut/modules.d>
11 getdents64(3<{T}/usr/lib/dracut/modules.d>, 0x1 /* 4 entries */, 32768) = 120
11 access("rel\x20x", R_OK)     = -1 ENOENT (No such file or directory)
11 openat(AT_FDCWD<{T}>, "/var/tmp/x", O_WRONLY|O_CREAT|O_TRUNC, 0644) = 4<{T}/var/tmp/x>
11 clone(child_stack=NULL, flags=SIGCHLD) = 3 /* 12 in strace's PID NS */
12 chroot("/var/tmp/d/initramfs") = 0
12 openat(AT_FDCWD</>, "/etc/inside-the-image", O_RDONLY) = 3
12 +++ exited with 0 +++
11 --- SIGCHLD {{si_signo=SIGCHLD}} ---
11 +++ exited with 0 +++
"#
        );
        let t = parse(&trace, T).unwrap();
        let paths: Vec<&str> = t.paths.iter().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "/",
                "/rel x",
                "/usr/bin/dracut",
                "/usr/lib/dracut/modules.d",
                "/usr/sbin/nope",
                "/var/tmp/x"
            ]
        );
        assert_eq!(
            t.listed.iter().collect::<Vec<_>>(),
            ["/usr/lib/dracut/modules.d"]
        );
        assert_eq!(t.written.iter().collect::<Vec<_>>(), ["/var/tmp/x"]);
        assert_eq!(t.executed.iter().collect::<Vec<_>>(), ["/usr/bin/dracut"]);
    }

    #[test]
    fn a_child_seen_before_its_clone_returns_is_held() {
        let trace = format!(
            r#"1 chroot("{T}") = 0
1 clone(child_stack=NULL <unfinished ...>
2 openat(AT_FDCWD<{T}>, "/etc/a", O_RDONLY) = 3<{T}/etc/a>
1 <... clone resumed>) = 2
"#
        );
        let t = parse(&trace, T).unwrap();
        assert_eq!(t.paths.iter().collect::<Vec<_>>(), ["/etc/a"]);
        // A process whose parent never returned from clone: the trace is incomplete.
        let bad = format!("1 chroot(\"{T}\") = 0\n2 openat(AT_FDCWD<{T}>, \"/x\", O_RDONLY) = 3\n");
        assert!(parse(&bad, T).is_err());
    }

    #[test]
    fn unknown_calls_and_unplaceable_paths_fail() {
        let t1 = format!("1 chroot(\"{T}\") = 0\n1 frobnicate(\"/x\") = 0\n");
        assert!(parse(&t1, T).is_err());
        // An fd inherited from the host (the log) is not a file of the tree.
        let t2 = format!(
            "1 chroot(\"{T}\") = 0\n1 newfstatat(1</c/log>, \"\", {{}}, AT_EMPTY_PATH) = 0\n"
        );
        assert!(parse(&t2, T).unwrap().paths.is_empty());
        // A relative path with no known current directory cannot be placed.
        let t3 = format!("1 chroot(\"{T}\") = 0\n1 access(\"x\", R_OK) = 0\n");
        assert!(parse(&t3, T).is_err());
        assert_eq!(unescape(r#"a\"b\\c\101\x41"#), "a\"b\\cAA");
    }
}

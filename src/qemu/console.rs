//! Console text: escape sequences and kernel messages removed, markers found.

/// Removes ANSI escape sequences (colours, cursor moves) from console text.
/// Removes kernel-log lines (`[  191.472505] unit[661]: …`) that services write to the
/// console while a command runs: they interleave with the command's output, also in the
/// middle of a line.
pub fn strip_kernel_messages(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find('[') {
        let after = &rest[start + 1..];
        let close = after.find(']');
        let stamp = close.map(|c| after[..c].trim());
        let is_stamp = stamp.is_some_and(|t| {
            let mut parts = t.splitn(2, '.');
            let (a, b) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        });
        if !is_stamp {
            out.push_str(&rest[..start + 1]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..start]);
        // Drop the message up to and including its newline.
        let msg = &rest[start..];
        rest = match msg.find('\n') {
            Some(n) => &msg[n + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// The offset just past the end of the line of the last marker to appear, once every one
/// of `markers` has appeared on a complete line of `text`.
pub(crate) fn end_of_all(text: &str, markers: &[String]) -> Option<usize> {
    let mut end = 0;
    for m in markers {
        let i = text.find(m.as_str())?;
        let eol = text[i..].find('\n')?;
        end = end.max(i + eol + 1);
    }
    Some(end)
}

/// The last `lines` lines of a console log, without escape sequences, indented: what a
/// failed wait shows so a CI log explains itself without the artifact.
pub fn console_tail(console: &str, lines: usize) -> String {
    let text = strip_ansi(console);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            if it.peek() == Some(&'[') {
                it.next();
                for d in it.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            } else {
                it.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(strip_ansi("\u{1b}[0;32m  OK  \u{1b}[0m] x"), "  OK  ] x");
        assert_eq!(strip_ansi("a\u{1b}cb"), "ab");
    }

    #[test]
    fn all_markers_in_any_order() {
        let ms = vec!["B".to_string(), "A".to_string()];
        assert_eq!(end_of_all("x A\ny B\nz", &ms), Some(8));
        assert_eq!(end_of_all("x B\ny A\nz", &ms), Some(8));
        // A marker on an unfinished line does not count yet.
        assert_eq!(end_of_all("x A\ny B", &ms), None);
        assert_eq!(end_of_all("x A\n", &ms), None);
    }

    #[test]
    fn console_tail_keeps_the_last_lines_without_escapes() {
        let log = "one\ntwo\n\u{1b}[0;31mthree\u{1b}[0m\nfour\n";
        assert_eq!(console_tail(log, 2), "  | three\n  | four");
        assert_eq!(console_tail("x", 5), "  | x");
        assert_eq!(console_tail("", 5), "");
    }

    #[test]
    fn kernel_messages_are_removed_from_command_output() {
        let a = "[  198.839893] boot-marker[658]: KILN-BOOTED commit=77\nhello from ignition";
        assert_eq!(strip_kernel_messages(a), "hello from ignition");
        let b = "hello from ignition[  188.301175] boot-marker[660]: KILN-BOOTED x\n";
        assert_eq!(strip_kernel_messages(b), "hello from ignition");
        let c = "a [b] [1.x] [ 2.5]\nkept";
        assert_eq!(strip_kernel_messages(c), "a [b] [1.x] kept");
    }
}

//! BuildKit's AST dump (`parser.Node.Dump()`): one `(instruction ["--flag"] "arg" ...)` line per
//! instruction with Go `%q` quoting. It is the format of BuildKit's parser `result` golden files,
//! which is how the conformance tests compare our tree with BuildKit's.

use std::fmt::Write as _;

use unicode_general_category::{GeneralCategory, get_general_category};

use super::ast::{Args, Dockerfile, Node};

/// The whole tree: each instruction's [`dump_node`] in parentheses, one per line, each line ending
/// in `\n` (BuildKit's root `Dump()` plus the final newline its `result` files have).
pub fn dump(dockerfile: &Dockerfile) -> String {
    let mut out = String::new();
    for node in &dockerfile.children {
        out.push('(');
        out.push_str(&dump_node(node));
        out.push_str(")\n");
    }
    out
}

/// One instruction without the surrounding parentheses: `copy ["--from=a"] "src" "dst"`.
pub fn dump_node(node: &Node) -> String {
    let mut out = node.instruction.to_lowercase();
    if !node.flags.is_empty() {
        out.push_str(" [");
        for (i, flag) in node.flags.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&go_quote(&flag.text));
        }
        out.push(']');
    }
    let mut push = |value: &str| {
        out.push(' ');
        out.push_str(&go_quote(value));
    };
    match &node.args {
        Args::Empty => {}
        Args::Json(values) => values.iter().for_each(|v| push(v)),
        Args::Values(values) if is_key_value(node) => {
            // BuildKit's chain is name, value, separator per pair: "=" or "" for the legacy form.
            let sep = if node.legacy_key_value { "" } else { "=" };
            for pair in values.chunks(2) {
                pair.iter().for_each(|v| push(v));
                push(sep);
            }
        }
        Args::Values(values) => values.iter().for_each(|v| push(v)),
        Args::Sub(sub) => {
            out.push_str(" (");
            out.push_str(&dump_node(sub));
            out.push(')');
        }
    }
    out.trim_matches(char::is_whitespace).to_string()
}

fn is_key_value(node: &Node) -> bool {
    matches!(node.instruction.as_str(), "env" | "label")
}

/// Go's `strconv.Quote`: a double-quoted literal where printable chars stay as they are and the
/// rest use Go escapes (`\a \b \f \n \r \t \v`, `\xNN` below U+0020 and for DEL, `\uNNNN`,
/// `\UNNNNNNNN`).
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if go_is_print(c) => out.push(c),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Go's `strconv.IsPrint`: letters, marks, numbers, punctuation, symbols and the ASCII space.
fn go_is_print(c: char) -> bool {
    if c.is_ascii() {
        return (' '..='~').contains(&c);
    }
    use GeneralCategory as G;
    !matches!(
        get_general_category(c),
        G::Control
            | G::Format
            | G::Surrogate
            | G::PrivateUse
            | G::Unassigned
            | G::SpaceSeparator
            | G::LineSeparator
            | G::ParagraphSeparator
    )
}

#[cfg(test)]
mod tests {
    use super::go_quote;

    #[test]
    fn quote_matches_go() {
        assert_eq!(go_quote("plain"), r#""plain""#);
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(
            go_quote("\u{7}\u{8}\u{c}\n\r\t\u{b}"),
            r#""\a\b\f\n\r\t\v""#
        );
        assert_eq!(go_quote("\u{0}\u{1b}\u{7f}"), r#""\x00\x1b\x7f""#);
        assert_eq!(go_quote("♥☃é"), "\"♥☃é\"");
        assert_eq!(go_quote("\u{a0}\u{ad}\u{2028}"), r#""\u00a0\u00ad\u2028""#);
        assert_eq!(go_quote("\u{85}"), r#""\u0085""#);
        assert_eq!(go_quote("\u{e0000}\u{10ffff}"), r#""\U000e0000\U0010ffff""#);
        assert_eq!(go_quote("😀"), "\"😀\"");
    }
}

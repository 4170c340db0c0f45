//! Making text from hosts safe to put in front of an operator.
//!
//! Anything a host prints or stores (step output, a lock's owner file, a rollback target) may
//! hold terminal control sequences: OSC 52 writes the clipboard, `ESC[2J` clears the screen,
//! cursor moves overwrite earlier lines. Nothing a host supplied reaches a terminal without
//! passing through here first. The audit log needs neither: JSON escapes control characters.

/// For the console, which draws text itself: drops escape sequences and control characters,
/// expands tabs, and keeps only the text after the last carriage return (what a terminal would
/// finally show for a progress bar).
pub fn clean(raw: &str) -> String {
    let visible = raw.rsplit('\r').find(|s| !s.is_empty()).unwrap_or("");
    let mut out = String::with_capacity(visible.len());
    let mut chars = visible.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates, then one final byte in @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ST (ESC \).
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.peek() == Some(&'\\')) {
                            if c == '\u{1b}' {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\t' => {
                let pad = 8 - out.chars().count() % 8;
                out.extend(std::iter::repeat_n(' ', pad));
            }
            c if c.is_control() || is_bidi_control(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// For plain output (headless mode, messages on stderr), where a log reader must see what the
/// host sent: every control character except tab and newline is written out as an escape
/// (`\x1b`, `\r`, `\u{202e}`), so it shows instead of acting. Colours are shown the same way:
/// headless output goes to CI logs and files, where a raw escape is noise at best.
pub fn visible(raw: &str) -> String {
    if !raw.chars().any(needs_escape) {
        return raw.to_string();
    }
    let mut out = String::with_capacity(raw.len() + 16);
    for c in raw.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t' && c != '\n') || is_bidi_control(c)
}

/// Characters that reorder the text around them, so what is shown differs from what is there.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

/// `text` in at most `width` characters: when it is longer, its middle gives way to `…`, so
/// names that differ only at the end (`prod-worker-4`, `prod-worker-5`) stay distinct.
pub fn shorten_middle(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_string();
    }
    if width == 0 {
        return String::new();
    }
    // The end tells names apart more often than the start: it gets the larger half.
    let tail = width / 2;
    let head = width - 1 - tail;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(count - tail).collect();
    format!("{start}…{end}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_too_long_gives_way_in_the_middle() {
        assert_eq!(shorten_middle("prod-worker-4", 9), "prod…er-4");
        assert_ne!(shorten_middle("prod-worker-4", 9), shorten_middle("prod-worker-5", 9));
        assert_eq!(shorten_middle("web-1", 9), "web-1");
        assert_eq!(shorten_middle("abcdef", 1), "…");
        assert_eq!(shorten_middle("abcdef", 0), "");
        assert_eq!(shorten_middle("ab", 2), "ab");
    }

    #[test]
    fn cleaning_strips_escapes_and_controls() {
        assert_eq!(clean("\u{1b}[1;31mred\u{1b}[0m text"), "red text");
        assert_eq!(clean("\u{1b}]0;title\u{7}after"), "after");
        assert_eq!(clean("10%\r50%\r100%"), "100%");
        assert_eq!(clean("a\tb"), "a       b");
        assert_eq!(clean("bell\u{7}"), "bell");
        assert_eq!(clean("abc\u{202e}def"), "abcdef");
    }

    #[test]
    fn visible_shows_every_escape_instead_of_obeying_it() {
        assert_eq!(visible("\u{1b}]52;c;aGk=\u{7}"), "\\x1b]52;c;aGk=\\x07");
        assert_eq!(visible("\u{1b}[2J"), "\\x1b[2J");
        assert_eq!(visible("\u{1b}]0;title\u{7}"), "\\x1b]0;title\\x07");
        assert_eq!(visible("50%\r100%"), "50%\\r100%");
        assert_eq!(visible("\u{9b}2J"), "\\x9b2J", "the 8-bit CSI too");
        assert_eq!(visible("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(visible("plain\ttext\nnext"), "plain\ttext\nnext");
    }
}

//! Text for dialogs that may be longer than the screen (help, the plan of 300 hosts, a command, a
//! timeline entry): lines of inked pieces, wrapped at words to a width.
//!
//! Wrapping lives here, not in drawing, because the key handler must know how many rows a
//! dialog has to scroll it without going past its end; both call [`wrap`] with the same width.

/// What a piece of text is, for the view to colour with the theme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ink {
    Text,
    Muted,
    Accent,
    Heading,
    Warn,
    Bad,
}

/// One line: pieces of text, each with its ink.
pub type Prose = Vec<(Ink, String)>;

pub fn line(ink: Ink, text: impl Into<String>) -> Prose {
    vec![(ink, text.into())]
}

/// Every line broken at spaces into rows of at most `width` characters; a word longer than a row
/// is cut where the row ends. Continuation rows keep the line's indentation, so a wrapped list
/// still reads as belonging to its label.
pub fn wrap(lines: &[Prose], width: usize) -> Vec<Prose> {
    let width = width.max(8);
    let mut rows = Vec::new();
    for prose in lines {
        // A label column (a first piece ending in a space, like "wave  1: " or a key) hangs
        // the rows after it under the text; otherwise they keep the line's own indentation.
        let indent = match prose.first() {
            Some((_, label)) if prose.len() > 1 && label.ends_with(' ') => label.chars().count(),
            Some((_, text)) => text.chars().take_while(|c| *c == ' ').count(),
            None => 0,
        }
        .min(width / 2);
        let mut row: Prose = Vec::new();
        let mut used = 0;
        for (ink, text) in prose {
            for word in words(text) {
                let mut word = word.to_string();
                loop {
                    let len = word.chars().count();
                    if used + len <= width {
                        push(&mut row, *ink, &word);
                        used += len;
                        break;
                    }
                    if used > indent && !word.trim().is_empty() {
                        // Start a new row and put the word there (without its leading space).
                        rows.push(std::mem::take(&mut row));
                        row.push((Ink::Text, " ".repeat(indent)));
                        used = indent;
                        word = word.trim_start().to_string();
                        continue;
                    }
                    // Longer than a whole row: cut it where the row ends.
                    let room = width - used;
                    let head: String = word.chars().take(room).collect();
                    push(&mut row, *ink, &head);
                    rows.push(std::mem::take(&mut row));
                    row.push((Ink::Text, " ".repeat(indent)));
                    used = indent;
                    word = word.chars().skip(room).collect();
                    if word.is_empty() {
                        break;
                    }
                }
            }
        }
        rows.push(row);
    }
    rows
}

/// Words with the spaces before them, so that joining them gives the text back.
fn words(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let spaces = rest.len() - rest.trim_start_matches(' ').len();
        let end = rest[spaces..].find(' ').map_or(rest.len(), |i| spaces + i);
        let (word, tail) = rest.split_at(end);
        rest = tail;
        Some(word)
    })
}

fn push(row: &mut Prose, ink: Ink, text: &str) {
    match row.last_mut() {
        Some((last, t)) if *last == ink => t.push_str(text),
        _ => row.push((ink, text.to_string())),
    }
}

/// A plan as the overview and the confirmation show it: its shape, then every wave's hosts.
pub fn plan(plan: &crate::plan::Plan) -> Vec<Prose> {
    let p = &plan.policy;
    let mut shape = format!(
        " · canary {} · batch {} · parallel {} · max failures {} per wave",
        p.canary, p.batch, p.parallel, p.max_failures
    );
    if !p.soak.is_zero() {
        shape.push_str(&format!(" · soak {}", humantime::format_duration(p.soak)));
    }
    if p.gate == crate::profile::Promotion::Manual {
        shape.push_str(" · manual gates");
    }
    let mut lines = vec![vec![
        (Ink::Text, format!("{} hosts in {} waves", plan.host_count(), plan.waves.len())),
        (Ink::Muted, shape),
    ]];
    if let Some(analysis) = plan.analysis_text() {
        lines.push(line(Ink::Muted, format!("analysis: {analysis}")));
    }
    if let Some(once) = &plan.once {
        let steps: Vec<&str> = once.steps.iter().map(|s| s.name.as_str()).collect();
        lines.push(line(Ink::Muted, format!("before wave 1, once on {}: {}", once.host.name, steps.join(" → "))));
    }
    for wave in &plan.waves {
        let names: Vec<&str> = wave.hosts.iter().map(|h| h.host.name.as_str()).collect();
        lines.push(vec![(Ink::Accent, format!("wave {:>2}: ", wave.number)), (Ink::Text, names.join(", "))]);
    }
    if let Some(host) = plan.waves.first().and_then(|w| w.hosts.first()) {
        let steps: Vec<&str> = host.steps.iter().map(|s| s.name.as_str()).collect();
        lines.push(line(Ink::Muted, format!("steps: {}", steps.join(" → "))));
    }
    lines
}

/// Where a scrolled view of `rows` rows, `shown` at a time, may start.
pub fn clamp_scroll(scroll: usize, rows: usize, shown: usize) -> usize {
    scroll.min(rows.saturating_sub(shown.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(rows: &[Prose]) -> Vec<String> {
        rows.iter().map(|r| r.iter().map(|(_, t)| t.as_str()).collect()).collect()
    }

    #[test]
    fn wraps_at_words_keeps_indentation_and_cuts_only_words_longer_than_a_row() {
        let lines = vec![vec![(Ink::Accent, "  wave 1: ".to_string()), (Ink::Text, "web-1, web-2, web-3".to_string())]];
        assert_eq!(plain(&wrap(&lines, 20)), ["  wave 1: web-1,", "          web-2,", "          web-3"]);
        let indented = vec![line(Ink::Text, "  one two three")];
        assert_eq!(plain(&wrap(&indented, 10)), ["  one two", "  three"]);
        let long = vec![line(Ink::Text, "x".repeat(20))];
        assert_eq!(plain(&wrap(&long, 8)), ["xxxxxxxx", "xxxxxxxx", "xxxx"]);
        assert_eq!(plain(&wrap(&[line(Ink::Text, "")], 8)), [""], "an empty line stays a row");
    }

    #[test]
    fn inks_survive_wrapping() {
        let lines = vec![vec![(Ink::Bad, "FAILED".to_string()), (Ink::Text, " because of this".to_string())]];
        let rows = wrap(&lines, 12);
        assert_eq!(rows[0][0], (Ink::Bad, "FAILED".to_string()));
        assert_eq!(plain(&rows), ["FAILED", "because of", "this"]);
    }

    #[test]
    fn scrolling_stops_at_the_last_page() {
        assert_eq!(clamp_scroll(100, 30, 10), 20);
        assert_eq!(clamp_scroll(3, 5, 10), 0);
    }
}

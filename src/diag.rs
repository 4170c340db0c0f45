//! Located diagnostics for files the operator wrote (profiles, themes).
//!
//! Every problem in user input is reported as `file:line:col: what was expected`, followed by
//! the offending source line and a caret, the way compilers do, so an engineer can jump straight
//! to it. This module knows nothing about what the files mean.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem at one place in a source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line and column (in characters), or `None` when the problem has no single place
    /// (a missing file, a missing section).
    pub position: Option<(usize, usize)>,
    pub message: String,
    /// The source line the position points into, kept for the caret display.
    pub source_line: Option<String>,
}

impl Diagnostic {
    /// A problem with the file as a whole.
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        Self { file: file.to_path_buf(), position: None, message: message.into(), source_line: None }
    }

    /// A problem at a byte span of `source`.
    pub fn at(file: &Path, source: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        let (line, col, text) = line_col(source, span.start);
        Self {
            file: file.to_path_buf(),
            position: Some((line, col)),
            message: message.into(),
            source_line: Some(text.to_string()),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)?,
            None => write!(f, "{}: {}", self.file.display(), self.message)?,
        }
        if let (Some((line, col)), Some(text)) = (self.position, &self.source_line) {
            let gutter = line.to_string().len();
            write!(f, "\n{:gutter$} |\n{line} | {text}\n{:gutter$} | {:>col$}", "", "", "^")?;
        }
        Ok(())
    }
}

/// All problems found in one pass over a file, so the operator can fix them in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "error: {d}")?;
        }
        let n = self.0.len();
        write!(f, "{n} problem{} found", if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for Diagnostics {}

/// Reads TOML into `T`, turning a syntax, type or unknown-key error into a located diagnostic.
pub fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, source: &str) -> Result<T, Diagnostics> {
    toml::from_str(source).map_err(|e| {
        let message = e.message().trim_end().replace('\n', " ");
        Diagnostics(vec![match e.span() {
            Some(span) => Diagnostic::at(path, source, span, message),
            None => Diagnostic::whole_file(path, message),
        }])
    })
}

/// 1-based line and character column of a byte offset, plus the text of that line.
fn line_col(source: &str, offset: usize) -> (usize, usize, &str) {
    let offset = offset.min(source.len());
    let before = &source[..floor_char_boundary(source, offset)];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let col = before[line_start..].chars().count() + 1;
    let line_end = source[line_start..].find('\n').map_or(source.len(), |i| line_start + i);
    (line, col, source[line_start..line_end].trim_end_matches('\r'))
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let src = "a = 1\nbé = 2\n";
        let off = src.find('2').unwrap();
        let d = Diagnostic::at(Path::new("p.toml"), src, off..off + 1, "bad");
        assert_eq!(d.position, Some((2, 6)));
        let shown = d.to_string();
        assert!(shown.starts_with("p.toml:2:6: bad"), "{shown}");
        assert!(shown.contains("2 | bé = 2"), "{shown}");
    }

    #[test]
    fn offset_past_end_is_clamped() {
        let d = Diagnostic::at(Path::new("p.toml"), "x", 10..10, "eof");
        assert_eq!(d.position, Some((1, 2)));
    }
}

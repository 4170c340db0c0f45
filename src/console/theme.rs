//! Colours. A theme file overrides only the keys it names; the rest come from the built-in dark
//! theme. With `NO_COLOR` set, everything is drawn in the terminal's own colours and emphasis
//! falls back to bold and reverse video, so no state is told by colour alone.

use std::path::Path;

use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;

use crate::diag::{Diagnostic, Diagnostics};

const DARK: &str = include_str!("../../themes/dark.toml");
const LIGHT: &str = include_str!("../../themes/light.toml");
const HIGH_CONTRAST: &str = include_str!("../../themes/high-contrast.toml");

/// Built-in themes by name.
pub const BUILT_IN: &[(&str, &str)] = &[("dark", DARK), ("light", LIGHT), ("high-contrast", HIGH_CONTRAST)];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Theme {
    /// False under `NO_COLOR`.
    pub color: bool,
    pub text: Color,
    pub muted: Color,
    pub accent: Color,
    pub border: Color,
    pub border_focus: Color,
    pub ok: Color,
    pub warn: Color,
    pub bad: Color,
    pub running: Color,
    pub stderr: Color,
    pub selection_fg: Color,
    pub selection_bg: Color,
    pub banner_fg: Color,
    pub banner_bg: Color,
    pub header_fg: Color,
    pub header_bg: Color,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ThemeFile {
    #[serde(default)]
    colors: Colors,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Colors {
    text: Option<toml::Spanned<String>>,
    muted: Option<toml::Spanned<String>>,
    accent: Option<toml::Spanned<String>>,
    border: Option<toml::Spanned<String>>,
    border_focus: Option<toml::Spanned<String>>,
    ok: Option<toml::Spanned<String>>,
    warn: Option<toml::Spanned<String>>,
    bad: Option<toml::Spanned<String>>,
    running: Option<toml::Spanned<String>>,
    stderr: Option<toml::Spanned<String>>,
    selection_fg: Option<toml::Spanned<String>>,
    selection_bg: Option<toml::Spanned<String>>,
    banner_fg: Option<toml::Spanned<String>>,
    banner_bg: Option<toml::Spanned<String>>,
    header_fg: Option<toml::Spanned<String>>,
    header_bg: Option<toml::Spanned<String>>,
}

impl Theme {
    /// The built-in dark theme. Its file is part of the binary, so failing to read it is a bug.
    pub fn dark() -> Theme {
        let mut theme = Theme::blank();
        // Tested below: the embedded file always parses.
        let _ = theme.overlay(Path::new("themes/dark.toml"), DARK);
        theme
    }

    /// No colours at all: for `NO_COLOR`.
    pub fn monochrome() -> Theme {
        Theme { color: false, ..Theme::blank() }
    }

    fn blank() -> Theme {
        let c = Color::Reset;
        Theme {
            color: true,
            text: c,
            muted: c,
            accent: c,
            border: c,
            border_focus: c,
            ok: c,
            warn: c,
            bad: c,
            running: c,
            stderr: c,
            selection_fg: c,
            selection_bg: c,
            banner_fg: c,
            banner_bg: c,
            header_fg: c,
            header_bg: c,
        }
    }

    /// Resolves `--theme`: a built-in name or a file path; `None` is the default.
    pub fn resolve(choice: Option<&str>, no_color: bool) -> Result<Theme, Diagnostics> {
        if no_color {
            return Ok(Theme::monochrome());
        }
        let mut theme = Theme::dark();
        let Some(choice) = choice else {
            return Ok(theme);
        };
        if let Some((name, text)) = BUILT_IN.iter().find(|(n, _)| *n == choice) {
            theme.overlay(Path::new(&format!("themes/{name}.toml")), text)?;
            return Ok(theme);
        }
        let path = Path::new(choice);
        let text = std::fs::read_to_string(path).map_err(|e| {
            let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
            Diagnostics(vec![Diagnostic::whole_file(
                path,
                format!("cannot read theme ({e}); built-in themes are: {}", names.join(", ")),
            )])
        })?;
        theme.overlay(path, &text)?;
        Ok(theme)
    }

    /// Applies the keys a theme file sets; reports every bad colour with its place.
    fn overlay(&mut self, path: &Path, text: &str) -> Result<(), Diagnostics> {
        let file: ThemeFile = crate::diag::parse_toml(path, text)?;
        let c = file.colors;
        let mut problems = Vec::new();
        let slots: [(&Option<toml::Spanned<String>>, &mut Color); 16] = [
            (&c.text, &mut self.text),
            (&c.muted, &mut self.muted),
            (&c.accent, &mut self.accent),
            (&c.border, &mut self.border),
            (&c.border_focus, &mut self.border_focus),
            (&c.ok, &mut self.ok),
            (&c.warn, &mut self.warn),
            (&c.bad, &mut self.bad),
            (&c.running, &mut self.running),
            (&c.stderr, &mut self.stderr),
            (&c.selection_fg, &mut self.selection_fg),
            (&c.selection_bg, &mut self.selection_bg),
            (&c.banner_fg, &mut self.banner_fg),
            (&c.banner_bg, &mut self.banner_bg),
            (&c.header_fg, &mut self.header_fg),
            (&c.header_bg, &mut self.header_bg),
        ];
        for (value, slot) in slots {
            let Some(value) = value else { continue };
            match value.get_ref().parse::<Color>() {
                Ok(color) => *slot = color,
                Err(_) => problems.push(Diagnostic::at(
                    path,
                    text,
                    value.span(),
                    format!(
                        "`{}` is not a colour: use a name like \"green\", \"#rrggbb\" or \"0\"..\"255\"",
                        value.get_ref()
                    ),
                )),
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(Diagnostics(problems)) }
    }

    pub fn fg(&self, color: Color) -> Style {
        if self.color { Style::default().fg(color) } else { Style::default() }
    }

    pub fn text(&self) -> Style {
        self.fg(self.text)
    }

    pub fn muted(&self) -> Style {
        if self.color { self.fg(self.muted) } else { Style::default().add_modifier(Modifier::DIM) }
    }

    pub fn bad(&self) -> Style {
        self.fg(self.bad).add_modifier(Modifier::BOLD)
    }

    pub fn selection(&self) -> Style {
        if self.color {
            Style::default().fg(self.selection_fg).bg(self.selection_bg)
        } else {
            Style::default().add_modifier(Modifier::REVERSED)
        }
    }

    /// The PAUSED / ABORTED banner: must be impossible to miss.
    pub fn banner(&self) -> Style {
        let style = Style::default().add_modifier(Modifier::BOLD);
        if self.color { style.fg(self.banner_fg).bg(self.banner_bg) } else { style.add_modifier(Modifier::REVERSED) }
    }

    pub fn header(&self) -> Style {
        if self.color {
            Style::default().fg(self.header_fg).bg(self.header_bg)
        } else {
            Style::default().add_modifier(Modifier::REVERSED)
        }
    }

    pub fn border(&self, focused: bool) -> Style {
        match (self.color, focused) {
            (true, true) => self.fg(self.border_focus),
            (true, false) => self.fg(self.border),
            (false, true) => Style::default().add_modifier(Modifier::BOLD),
            (false, false) => Style::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_theme_parses_and_sets_every_key() {
        for (name, text) in BUILT_IN {
            let mut theme = Theme::blank();
            theme.overlay(Path::new(name), text).unwrap();
            assert_ne!(theme.selection_bg, Color::Reset, "{name}");
        }
    }

    #[test]
    fn a_partial_theme_overrides_only_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.toml");
        std::fs::write(&path, "[colors]\nok = \"#00ff00\"\n").unwrap();
        let theme = Theme::resolve(Some(path.to_str().unwrap()), false).unwrap();
        assert_eq!(theme.ok, Color::Rgb(0, 255, 0));
        assert_eq!(theme.bad, Theme::dark().bad);
    }

    #[test]
    fn bad_colours_and_keys_are_located() {
        let mut theme = Theme::dark();
        let err = theme.overlay(Path::new("t.toml"), "[colors]\nok = \"greenish\"\nbad = \"nope\"\n").unwrap_err();
        assert_eq!(err.0.len(), 2);
        assert!(err.to_string().contains("t.toml:2:6: `greenish` is not a colour"), "{err}");
        let err = theme.overlay(Path::new("t.toml"), "[colors]\nokk = \"red\"\n").unwrap_err();
        assert!(err.to_string().contains("t.toml:2:1"), "{err}");
    }

    /// A colour as xterm draws it by default: the palette a contrast check can assume.
    fn rgb(color: Color) -> Option<[f64; 3]> {
        const ANSI: [u32; 16] = [
            0x000000, 0xcd0000, 0x00cd00, 0xcdcd00, 0x0000ee, 0xcd00cd, 0x00cdcd, 0xe5e5e5, 0x7f7f7f, 0xff0000,
            0x00ff00, 0xffff00, 0x5c5cff, 0xff00ff, 0x00ffff, 0xffffff,
        ];
        let hex = |v: u32| Some([(v >> 16) as f64, ((v >> 8) & 0xff) as f64, (v & 0xff) as f64]);
        let named = [
            Color::Black,
            Color::Red,
            Color::Green,
            Color::Yellow,
            Color::Blue,
            Color::Magenta,
            Color::Cyan,
            Color::Gray,
            Color::DarkGray,
            Color::LightRed,
            Color::LightGreen,
            Color::LightYellow,
            Color::LightBlue,
            Color::LightMagenta,
            Color::LightCyan,
            Color::White,
        ];
        match color {
            Color::Rgb(r, g, b) => Some([r as f64, g as f64, b as f64]),
            Color::Indexed(i) if i < 16 => hex(ANSI[i as usize]),
            Color::Indexed(i) if i >= 232 => {
                let v = 8.0 + 10.0 * (i - 232) as f64;
                Some([v, v, v])
            }
            Color::Indexed(i) => {
                let level = |n: u8| if n == 0 { 0.0 } else { 55.0 + 40.0 * n as f64 };
                let i = i - 16;
                Some([level(i / 36), level(i / 6 % 6), level(i % 6)])
            }
            Color::Reset => None,
            other => named.iter().position(|c| *c == other).and_then(|i| hex(ANSI[i])),
        }
    }

    /// WCAG 2 contrast ratio of two colours.
    fn contrast(a: [f64; 3], b: [f64; 3]) -> f64 {
        let luminance = |c: [f64; 3]| {
            let channel = |v: f64| {
                let v = v / 255.0;
                if v <= 0.03928 { v / 12.92 } else { ((v + 0.055) / 1.055).powf(2.4) }
            };
            0.2126 * channel(c[0]) + 0.7152 * channel(c[1]) + 0.0722 * channel(c[2])
        };
        let (x, y) = (luminance(a), luminance(b));
        (x.max(y) + 0.05) / (x.min(y) + 0.05)
    }

    #[test]
    fn every_word_of_every_theme_is_readable_where_it_is_drawn() {
        // The terminal's own background, which each theme is made for.
        let backgrounds = [("dark", [0.0; 3]), ("light", [255.0; 3]), ("high-contrast", [0.0; 3])];
        let mut problems = Vec::new();
        for (name, background) in backgrounds {
            let theme = Theme::resolve(Some(name), false).unwrap();
            let on = |bg: Color| rgb(bg).unwrap_or(background);
            // State words and text on the screen's background; the selected row's words (drawn
            // in the selection's colour), the banner and the header on theirs.
            let pairs = [
                ("text", theme.text, background),
                ("muted", theme.muted, background),
                ("accent", theme.accent, background),
                ("ok", theme.ok, background),
                ("warn", theme.warn, background),
                ("bad", theme.bad, background),
                ("running", theme.running, background),
                ("stderr", theme.stderr, background),
                ("selection", theme.selection_fg, on(theme.selection_bg)),
                ("banner", theme.banner_fg, on(theme.banner_bg)),
                ("header", theme.header_fg, on(theme.header_bg)),
            ];
            for (what, fg, bg) in pairs {
                let Some(fg) = rgb(fg) else { continue };
                let ratio = contrast(fg, bg);
                if ratio < 4.5 {
                    problems.push(format!("{name}: {what} {ratio:.2}:1"));
                }
            }
        }
        assert!(problems.is_empty(), "below WCAG AA (4.5:1): {problems:?}");
    }

    #[test]
    fn contrast_is_computed_as_wcag_says() {
        assert!((contrast([0.0; 3], [255.0; 3]) - 21.0).abs() < 0.01);
        assert!((contrast([0x77 as f64; 3], [255.0; 3]) - 4.48).abs() < 0.01);
    }

    #[test]
    fn no_color_wins() {
        let theme = Theme::resolve(Some("light"), true).unwrap();
        assert!(!theme.color);
        assert_eq!(theme.selection(), Style::default().add_modifier(Modifier::REVERSED));
    }
}

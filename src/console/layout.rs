//! Where each pane goes for a given terminal size.
//!
//! Pure functions shared by drawing and by mouse handling, so a click lands on the pane that
//! was drawn there.

use ratatui::layout::{Constraint, Layout, Rect};

/// Smallest terminal the console draws in; below it a notice asks for more room.
pub const MIN_WIDTH: u16 = 80;
pub const MIN_HEIGHT: u16 = 24;

/// From this size on, health and timeline get their own panes instead of sharing the log's.
const WIDE_WIDTH: u16 = 120;
const TALL_HEIGHT: u16 = 36;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeployLayout {
    pub header: Rect,
    pub waves: Rect,
    pub hosts: Rect,
    pub logs: Rect,
    pub health: Rect,
    pub timeline: Rect,
    pub footer: Rect,
    /// Logs, health and timeline share one area; the focused one is shown.
    pub shared_detail: bool,
}

pub fn too_small(area: Rect) -> bool {
    area.width < MIN_WIDTH || area.height < MIN_HEIGHT
}

pub fn deploy(area: Rect) -> DeployLayout {
    let [header, waves, body, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(2), Constraint::Min(0), Constraint::Length(1)])
            .areas(area);
    if area.width >= WIDE_WIDTH && area.height >= TALL_HEIGHT {
        let [left, right] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(body);
        let [hosts, health] = Layout::vertical([Constraint::Percentage(62), Constraint::Percentage(38)]).areas(left);
        let [logs, timeline] = Layout::vertical([Constraint::Percentage(62), Constraint::Percentage(38)]).areas(right);
        DeployLayout { header, waves, hosts, logs, health, timeline, footer, shared_detail: false }
    } else {
        let [hosts, detail] = Layout::vertical([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(body);
        DeployLayout {
            header,
            waves,
            hosts,
            logs: detail,
            health: detail,
            timeline: detail,
            footer,
            shared_detail: true,
        }
    }
}

/// Host rows that fit in the table area (borders and header excluded).
pub fn table_rows(area: Rect) -> usize {
    area.height.saturating_sub(3).max(1) as usize
}

/// First row shown so that the selected row is visible.
pub fn first_visible_row(selected: usize, rows: usize) -> usize {
    (selected + 1).saturating_sub(rows.max(1))
}

/// Widths of dialogs that show text: most, and the wide ones (a command, a resume).
pub const DIALOG_WIDTH: u16 = 78;
pub const WIDE_DIALOG_WIDTH: u16 = 96;

/// Characters of text per row in a text dialog `width` wide (a border and a space each side).
pub fn text_width(area: Rect, width: u16) -> usize {
    width.min(area.width).saturating_sub(4) as usize
}

/// A text dialog of `rows` rows (wrapped to [`text_width`]) above `pinned` rows that never
/// scroll (an input, the keys): sized to its content, at most the screen. Returns where it goes
/// and how many text rows show at once.
pub fn text_dialog(area: Rect, width: u16, rows: usize, pinned: u16) -> (Rect, usize) {
    let want = (rows as u16).saturating_add(pinned + 2);
    let rect = centered(area, width, want.min(area.height.saturating_sub(2).max(pinned + 3)));
    let shown = rect.height.saturating_sub(pinned + 2).max(1) as usize;
    (rect, shown)
}

/// A centred rectangle for dialogs.
pub fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect::new(area.x + (area.width - width) / 2, area.y + (area.height - height) / 2, width, height)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_terminals_share_the_detail_pane() {
        let l = deploy(Rect::new(0, 0, 80, 24));
        assert!(l.shared_detail);
        assert_eq!(l.logs, l.health);
        assert_eq!(l.header.height + l.waves.height + l.hosts.height + l.logs.height + l.footer.height, 24);
    }

    #[test]
    fn large_terminals_get_four_panes() {
        let l = deploy(Rect::new(0, 0, 160, 48));
        assert!(!l.shared_detail);
        assert_ne!(l.logs, l.timeline);
    }

    #[test]
    fn a_text_dialog_fits_its_content_or_the_screen_and_keeps_its_pinned_rows() {
        let screen = Rect::new(0, 0, 80, 24);
        assert_eq!(text_dialog(screen, 78, 5, 1), (Rect::new(1, 8, 78, 8), 5));
        let (rect, shown) = text_dialog(screen, 78, 300, 1);
        assert_eq!((rect.height, shown), (22, 19), "300 rows: the screen less a margin, one row pinned");
    }

    #[test]
    fn selection_stays_visible() {
        assert_eq!(first_visible_row(0, 5), 0);
        assert_eq!(first_visible_row(4, 5), 0);
        assert_eq!(first_visible_row(9, 5), 5);
    }
}

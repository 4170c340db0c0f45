//! Drawing: a pure function of the app state, the theme and the clock.
//!
//! Nothing here mutates state, locks or does I/O. Only what is visible is built: the host
//! table's visible rows, the log's visible lines.

use chrono::{DateTime, FixedOffset, Utc};
use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Borders, Cell, Clear, Paragraph, Row, Table, Wrap};

use super::app::{App, Dialog, Pane, SortOrder, phase_word};
use super::keymap;
use super::layout::{self, DeployLayout};
use super::logs::clean;
use super::model::{ControlView, DeployModel, HostPhase, HostView, Tone, WavePhase};
use super::prose::{self, Ink, Prose};
use super::theme::Theme;
use crate::event::{Outcome, PauseCause, Stream};

/// The time the frame is drawn at and the operator's UTC offset, passed in so that drawing
/// stays pure and snapshots stay stable.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: DateTime<Utc>,
    pub offset: FixedOffset,
}

pub fn draw(frame: &mut Frame, app: &App, theme: &Theme, clock: Clock) {
    let area = frame.area();
    if layout::too_small(area) {
        let mut lines = vec![Line::raw(format!(
            "terminal too small: {}×{}, wavedeck needs {}×{}",
            area.width,
            area.height,
            layout::MIN_WIDTH,
            layout::MIN_HEIGHT
        ))];
        // A deploy goes on while the window is small: say how it stands and how to stop it.
        if let (Some(model), Some(label)) = (&app.deploy, app.control_label()) {
            lines.push(Line::raw(""));
            lines.push(Line::raw(format!("{} → {} · {}", model.service, model.env, model.release)));
            lines.push(Line::styled(label, theme.banner()));
            let keys = match model.control {
                _ if app.observing => "OBSERVING · q quit",
                ControlView::Running | ControlView::AwaitingPromote { .. } => "p pause · a abort · q quit",
                ControlView::Paused { .. } => "r resume · a abort · q quit",
                ControlView::Aborted { .. } | ControlView::Finished(_) => "q quit",
            };
            lines.push(Line::raw(keys));
        }
        frame.render_widget(Paragraph::new(lines).alignment(Alignment::Center).wrap(Wrap { trim: true }), area);
        if let Some(dialog) = &app.dialog {
            draw_dialog(frame, app, dialog, theme);
        }
        return;
    }
    match &app.deploy {
        Some(model) => draw_deploy(frame, app, model, theme, clock),
        None => draw_overview(frame, app, theme, clock),
    }
    if let Some(dialog) = &app.dialog {
        draw_dialog(frame, app, dialog, theme);
    }
}

// ---------------------------------------------------------------------------------------------
// Overview

fn draw_overview(frame: &mut Frame, app: &App, theme: &Theme, clock: Clock) {
    let [header, body, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(0), Constraint::Length(1)]).areas(frame.area());
    let profiles = app.profiles.len();
    let title =
        format!(" wavedeck · {profiles} profile{} · operator {} ", if profiles == 1 { "" } else { "s" }, app.operator);
    frame.render_widget(Paragraph::new(title).style(theme.header()), header);

    // Room for both markers (PROTECTED, INTERRUPTED) where the terminal is wide enough.
    let wide = body.width >= 120;
    let [left, right] =
        Layout::horizontal([Constraint::Length(if wide { 48 } else { 34 }), Constraint::Min(0)]).areas(body);
    let mut lines = Vec::new();
    let mut last_profile = None;
    for (i, target) in app.targets.iter().enumerate() {
        let profile = &app.profiles[target.profile];
        if last_profile != Some(target.profile) {
            last_profile = Some(target.profile);
            let style = theme.fg(theme.accent).add_modifier(Modifier::BOLD);
            lines.push(Line::styled(format!(" {}", profile.service), style));
        }
        let env = &profile.environments[target.env];
        let mut spans = vec![
            Span::raw(format!("   {:<14}", env.name)),
            Span::styled(format!("{:>4}", env.hosts.len()), theme.muted()),
        ];
        let interrupted = app.interrupted.contains_key(&i);
        if env.protected && (wide || !interrupted) {
            spans.push(Span::styled("  PROTECTED", theme.bad()));
        }
        if interrupted {
            let marker = if wide { "  INTERRUPTED" } else { "  ⚠ resume: u" };
            spans.push(Span::styled(marker, theme.fg(theme.warn)));
        }
        // On the selection bar, the bar's own colours (see the host table).
        let line = if i == app.selected_target {
            Line::from(spans.into_iter().map(|s| Span::raw(s.content)).collect::<Vec<_>>()).style(theme.selection())
        } else {
            Line::from(spans)
        };
        lines.push(line);
    }
    frame.render_widget(Paragraph::new(lines).block(pane_block(" Environments · hosts ", true, theme)), left);

    let [hosts_area, plan_area] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(right);
    if let Some(env) = app.target_env() {
        // Address and labels only where there is room for them.
        let wide = hosts_area.width >= 70;
        // The HOST column's share of the table (below); a longer name gives way in the middle.
        let name_width =
            (hosts_area.width.saturating_sub(2) as usize * if wide { 24 } else { 40 } / 100).saturating_sub(1);
        let releases = app.releases.get(&app.selected_target);
        let reach = app.reachability.get(&app.selected_target);
        let rows = env.hosts.iter().map(|h| {
            let release = releases.and_then(|r| r.get(&h.name)).cloned().unwrap_or_else(|| "—".into());
            let status = reach.and_then(|r| r.get(&h.name));
            let status_cell = match status.map(String::as_str) {
                None => Span::styled("c: check", theme.muted()),
                Some("ok") => Span::styled("ok", theme.fg(theme.ok)),
                Some("checking…") => Span::styled("checking…", theme.muted()),
                Some(other) => Span::styled(other.to_string(), theme.bad()),
            };
            let mut cells = vec![Cell::from(crate::text::shorten_middle(&h.name, name_width.max(4)))];
            if wide {
                // Labels cut where the column ends say so (…), like names.
                let labels_width = (hosts_area.width.saturating_sub(2) as usize * 24 / 100).saturating_sub(1);
                cells.extend([Cell::from(h.address.clone()), Cell::from(fit(&h.labels.join(", "), labels_width))]);
            }
            cells.extend([Cell::from(release), Cell::from(status_cell)]);
            Row::new(cells)
        });
        let (widths, header): (Vec<Constraint>, Vec<&str>) = if wide {
            (
                vec![
                    Constraint::Percentage(24),
                    Constraint::Percentage(16),
                    Constraint::Percentage(24),
                    Constraint::Percentage(14),
                    Constraint::Percentage(22),
                ],
                vec!["HOST", "ADDRESS", "LABELS", "RELEASE", "REACH"],
            )
        } else {
            (
                vec![Constraint::Percentage(40), Constraint::Percentage(25), Constraint::Percentage(35)],
                vec!["HOST", "RELEASE", "REACH"],
            )
        };
        let header_row = Row::new(header).style(theme.muted());
        let transport = match env.transport {
            crate::profile::TransportKind::Local => "local",
            crate::profile::TransportKind::Ssh => "ssh",
        };
        let title = format!(" Hosts — {} ({transport} transport) ", env.name);
        frame.render_widget(
            Table::new(rows, widths).header(header_row).block(pane_block(&title, false, theme)),
            hosts_area,
        );
    }
    let width = plan_area.width.saturating_sub(2) as usize;
    // The environment's last deploy first: who, when, and how it ended.
    let mut plan_prose = app.last_runs.get(&app.selected_target).map(|run| last_run(run, clock)).unwrap_or_default();
    let plan_text: Vec<Line> = match &app.preview {
        Ok(plan) => {
            plan_prose.extend(prose::plan(plan));
            prose::wrap(&plan_prose, width).iter().map(|row| prose_line(row, theme)).collect()
        }
        Err(e) => vec![Line::styled(e.clone(), theme.bad())],
    };
    frame.render_widget(
        Paragraph::new(plan_text).wrap(Wrap { trim: false }).block(pane_block(" Plan ", false, theme)),
        plan_area,
    );
    let hint = if app.targets.is_empty() {
        "no environments in these profiles · q quit".to_string()
    } else {
        keymap::footer(keymap::Screen::Overview, keymap::Moment::Idle)
    };
    draw_footer(frame, footer, app, &hint, theme);
}

/// "last: 2.4.1 by ann, 3h 12m ago · ABORTED: db on fire", the outcome inked by what it was.
fn last_run(run: &crate::rollback::LastRun, clock: Clock) -> Vec<Prose> {
    let ago = DateTime::parse_from_rfc3339(&run.at)
        .map(|at| {
            let secs = (clock.now - at.with_timezone(&Utc)).num_seconds().max(0);
            match secs {
                s if s < 60 => "just now".to_string(),
                s if s < 3600 => format!("{}m ago", s / 60),
                s if s < 86_400 => format!("{}h {}m ago", s / 3600, s / 60 % 60),
                s => format!("{}d ago", s / 86_400),
            }
        })
        .unwrap_or_else(|_| run.at.clone());
    let what = match run.release.strip_prefix(crate::plan::ROLLBACK_PREFIX) {
        Some(of) => format!("rollback of {of}"),
        None => run.release.clone(),
    };
    let (ink, outcome) = match run.outcome.as_deref() {
        Some("succeeded") => (Ink::Text, "succeeded".to_string()),
        Some(other) => (Ink::Bad, other.to_uppercase()),
        None => (Ink::Warn, "did not finish".to_string()),
    };
    let reason = run.reason.as_ref().map(|r| format!(": {}", crate::text::clean(r))).unwrap_or_default();
    vec![vec![
        (Ink::Muted, format!("last: {} by {}, {ago}", crate::text::clean(&what), crate::text::clean(&run.operator))),
        (ink, format!(" · {outcome}{reason}")),
    ]]
}

// ---------------------------------------------------------------------------------------------
// Deploy view

fn draw_deploy(frame: &mut Frame, app: &App, model: &DeployModel, theme: &Theme, clock: Clock) {
    let areas = layout::deploy(frame.area());
    draw_header(frame, areas.header, app, model, theme, clock);
    draw_waves(frame, areas.waves, model, theme, clock);
    draw_hosts(frame, areas.hosts, app, model, theme, clock);
    draw_details(frame, &areas, app, model, theme, clock);
    let moment = match model.control {
        _ if app.observing && !matches!(model.control, ControlView::Finished(_)) => keymap::Moment::Observing,
        ControlView::Running | ControlView::Aborted { .. } => keymap::Moment::Running,
        ControlView::Paused { .. } => keymap::Moment::Paused,
        ControlView::AwaitingPromote { .. } => keymap::Moment::AtGate,
        ControlView::Finished(_) => keymap::Moment::Finished,
    };
    let mut hint = keymap::footer(keymap::Screen::Deploy, moment);
    if moment == keymap::Moment::Observing {
        hint = format!("OBSERVING, control keys off · {hint}");
    }
    if app.replay.is_some() {
        hint = "space pause/play · > next command or failure · + - speed · [ ] ∓1 min · 0-9 jump · Tab pane · q quit"
            .into();
    }
    draw_footer(frame, areas.footer, app, &hint, theme);
}

fn draw_header(frame: &mut Frame, area: Rect, app: &App, model: &DeployModel, theme: &Theme, clock: Clock) {
    let elapsed = match (model.started, model.finished) {
        (Some(start), Some(end)) => end - start,
        (Some(start), None) => clock.now - start,
        _ => chrono::Duration::zero(),
    };
    // A rollback says so first, in the banner's colours, so it is never taken for a deploy.
    let (left, left_style) = match &model.rollback_of {
        Some(of) => (
            format!(
                " ROLLBACK of {of} → previous · {} → {} · by {} · {} ",
                model.service,
                model.env,
                model.operator,
                clock_text(elapsed)
            ),
            theme.banner(),
        ),
        None => (
            format!(
                " wavedeck · {} → {} · release {} · by {} · {} ",
                model.service,
                model.env,
                model.release,
                model.operator,
                clock_text(elapsed)
            ),
            theme.header(),
        ),
    };
    // A replay says so first, in the banner's colours: nothing on screen is happening now.
    let (left, left_style) = match &app.replay {
        Some(replay) => (format!(" {replay} ·{}", left.trim_start_matches(" wavedeck ·")), theme.banner()),
        None => (left, left_style),
    };
    let label = app.control_label().unwrap_or_default();
    let label_style = match &model.control {
        ControlView::Paused { .. } | ControlView::Aborted { .. } | ControlView::AwaitingPromote { .. } => {
            theme.banner()
        }
        // On the screen's background, not the header's: green keeps its contrast there.
        ControlView::Finished(Outcome::Succeeded) => theme.fg(theme.ok).add_modifier(Modifier::BOLD),
        ControlView::Finished(_) => theme.banner(),
        ControlView::Running => theme.header().add_modifier(Modifier::BOLD),
    };
    let right = format!(" {label} ");
    let [l, r] = Layout::horizontal([Constraint::Min(0), Constraint::Length(right.chars().count() as u16)]).areas(area);
    frame.render_widget(Paragraph::new(left).style(left_style), l);
    frame.render_widget(Paragraph::new(right).style(label_style), r);
}

fn draw_waves(frame: &mut Frame, area: Rect, model: &DeployModel, theme: &Theme, clock: Clock) {
    let [chips_area, status_area] = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(area);
    frame.render_widget(Paragraph::new(wave_strip(model, theme, chips_area.width as usize)), chips_area);
    let status = match &model.control {
        ControlView::Paused { cause, running } => {
            // How long it has stood still: a pause is not a hang, and a long one is noticed.
            let since =
                model.control_since.map(|since| format!(" {}", clock_text(clock.now - since))).unwrap_or_default();
            let why = match cause {
                PauseCause::Operator => format!("PAUSED{since} by {}", model.operator),
                // Counted now, not when the pause began: retries and skips change it.
                PauseCause::FailureThreshold { wave, limit, .. } => {
                    let trouble = model.wave_trouble(*wave);
                    let named = match trouble.len() {
                        0..=2 => trouble.join(", "),
                        n => format!("{} and {} more", trouble[..2].join(", "), n - 2),
                    };
                    // The count first: the causes may be long and are what gets cut (with …).
                    format!(
                        "PAUSED{since} · wave {wave} stopped, {} > {limit} allowed: {named}",
                        model.wave_failures(*wave)
                    )
                }
                PauseCause::Analysis { wave, reason } => {
                    format!("PAUSED{since} · wave {wave} worse than old: {reason}")
                }
            };
            let still = if running.is_empty() {
                "nothing running".to_string()
            } else {
                format!("finishing: {}", running.join(", "))
            };

            let keys = match cause {
                PauseCause::FailureThreshold { .. } => "r resume · R retry · x skip · a abort",
                PauseCause::Operator => "r resume · a abort",
                PauseCause::Analysis { .. } => "r resume · a abort · B roll back when done",
            };
            // The cause first; the keys only where they fit (the footer offers them too).
            let full = format!(" {why} · {keys} · {still} ");
            let text = if full.chars().count() <= area.width as usize { full } else { format!(" {why} · {still} ") };
            Line::styled(fit(&crate::text::clean(&text), area.width as usize), theme.banner())
        }
        ControlView::Aborted { reason } => {
            let text = format!(" ABORTED: {reason} · waiting for running steps to stop ");
            Line::styled(fit(&crate::text::clean(&text), area.width as usize), theme.banner())
        }
        ControlView::AwaitingPromote { wave } => {
            let waited = model.control_since.map(|since| format!(" {}", clock_text(clock.now - since)));
            Line::styled(
                format!(
                    " WAITING FOR PROMOTE{} · wave {wave} is done and healthy · P promote the next wave · a abort ",
                    waited.unwrap_or_default()
                ),
                theme.banner(),
            )
        }
        ControlView::Finished(outcome) => {
            let exceptions = model.exceptions();
            let (word, style) = match outcome {
                Outcome::Succeeded if !exceptions.is_empty() => {
                    ("SUCCEEDED WITH EXCEPTIONS", theme.fg(theme.warn).add_modifier(Modifier::BOLD))
                }
                Outcome::Succeeded => ("SUCCEEDED", theme.fg(theme.ok).add_modifier(Modifier::BOLD)),
                Outcome::Failed => ("FAILED", theme.banner()),
                Outcome::Aborted => ("ABORTED", theme.banner()),
            };
            let mut counts = format!(
                "{} done · {} failed · {} cancelled",
                model.count(HostPhase::Done),
                model.count(HostPhase::Failed),
                model.count(HostPhase::Cancelled)
            );
            for (phase, word) in [(HostPhase::Skipped, "skipped"), (HostPhase::NotStarted, "not started")] {
                let n = model.count(phase);
                if n > 0 {
                    counts.push_str(&format!(" · {n} {word}"));
                }
            }
            let mut notes = String::new();
            if let (Outcome::Aborted, Some(reason)) = (outcome, &model.abort_reason) {
                notes.push_str(&format!(" · reason: {reason}"));
            }
            if *outcome == Outcome::Succeeded && !exceptions.is_empty() {
                notes.push_str(&format!(" · {}", exceptions.join(", ")));
            }
            if model.mixed_releases() {
                notes.push_str(&format!(" · {} runs mixed releases", model.env));
            }
            let text = crate::text::clean(&format!(" {word}: {counts}{notes} · o overview · q quit "));
            Line::styled(fit(&text, area.width as usize), style)
        }
        ControlView::Running => {
            let total = model.hosts.len();
            // Waiting out a soak is not a hang: it counts, first, so it shows at 80 columns too.
            let soak = match (model.soak, model.between_waves()) {
                (Some((wave, began, lasts)), _) => {
                    format!(" soak of wave {wave}: {} / {} ·", clock_text(clock.now - began), clock_text(lasts))
                }
                // Between two waves (a pause_between_waves): nothing runs, and that is planned.
                (None, Some((next, since))) => {
                    format!(" wave {next} starts soon: waited {} ·", clock_text(clock.now - since))
                }
                (None, None) => String::new(),
            };
            let pace = wave_clock(model, clock.now).map_or_else(String::new, |c| format!(" {c} ·"));
            Line::from(vec![
                Span::raw(" overall "),
                Span::styled(bar(model.settled(), total, 24), theme.fg(theme.accent)),
                Span::styled(soak, theme.fg(theme.warn)),
                Span::styled(pace, theme.fg(theme.accent)),
                Span::raw(format!(
                    " {}/{} hosts · {} running · {} done · ",
                    model.settled(),
                    total,
                    model.count(HostPhase::Running),
                    model.count(HostPhase::Done)
                )),
                Span::styled(
                    format!("{} failed", model.count(HostPhase::Failed)),
                    if model.count(HostPhase::Failed) > 0 { theme.bad() } else { theme.text() },
                ),
            ])
        }
    };
    frame.render_widget(Paragraph::new(status), status_area);
}

/// One chip per wave (mark, name, hosts settled, a bar); when they do not all fit, a window of
/// them around the wave that matters now, with how many more lie on each side.
fn wave_strip(model: &DeployModel, theme: &Theme, width: usize) -> Line<'static> {
    let count = model.waves.len();
    let chips: Vec<(String, String, Style)> = model
        .waves
        .iter()
        .map(|wave| {
            let hosts: Vec<&HostView> = wave.hosts.iter().map(|&i| &model.hosts[i]).collect();
            // Hosts that ran to an end; skipped ones never ran and do not fill the bar.
            let settled = hosts
                .iter()
                .filter(|h| matches!(h.phase, HostPhase::Done | HostPhase::Failed | HostPhase::Cancelled))
                .count();
            let failed = hosts.iter().filter(|h| h.phase == HostPhase::Failed || h.went_unhealthy).count();
            let never_ran = hosts.iter().all(|h| matches!(h.phase, HostPhase::Skipped | HostPhase::NotStarted));
            let (mark, style) = match (wave.phase, failed) {
                (_, f) if f > 0 => ("✗", theme.bad()),
                _ if never_ran => ("–", theme.muted()),
                (WavePhase::Finished, _) if hosts.iter().all(|h| h.phase == HostPhase::Done) => {
                    ("✓", theme.fg(theme.ok))
                }
                (WavePhase::Finished, _) => ("■", theme.fg(theme.warn)),
                (WavePhase::Running, _) => ("▶", theme.fg(theme.running).add_modifier(Modifier::BOLD)),
                (WavePhase::Pending, _) => ("·", theme.muted()),
            };
            let name = if model.rollback_of.is_some() {
                format!("rollback wave {}/{count}", wave.number)
            } else if wave.number == 1 && count > 1 && hosts.len() < model.hosts.len() / 2 + 1 {
                "canary".to_string()
            } else {
                format!("W{}", wave.number)
            };
            (format!("{mark} {name} {settled}/{} ", hosts.len()), bar(settled, hosts.len(), 6), style)
        })
        .collect();
    let chip_width = |c: &(String, String, Style)| c.0.chars().count() + c.1.chars().count() + 2;
    let total: usize = 1 + chips.iter().map(chip_width).sum::<usize>();
    // The wave that matters now: the running one, else the next to run, else the last.
    let focus = model
        .waves
        .iter()
        .position(|w| w.phase == WavePhase::Running)
        .or_else(|| model.waves.iter().position(|w| w.phase == WavePhase::Pending))
        .unwrap_or(count.saturating_sub(1));
    let (mut first, mut last) = (0, count);
    if total > width {
        // Grow a window around the focus while it fits with room for both "+N more" marks.
        let room = width.saturating_sub(1 + 2 * 12 + 14);
        (first, last) = (focus, (focus + 1).min(count));
        let mut used = chips.get(focus).map_or(0, chip_width);
        loop {
            let right = chips.get(last).map(chip_width).filter(|w| used + w <= room);
            if let Some(w) = right {
                used += w;
                last += 1;
            }
            let left = first.checked_sub(1).and_then(|i| chips.get(i)).map(chip_width).filter(|w| used + w <= room);
            if let Some(w) = left {
                used += w;
                first -= 1;
            }
            if right.is_none() && left.is_none() {
                break;
            }
        }
    }
    let mut spans = vec![Span::raw(" ")];
    if first > 0 {
        spans.push(Span::styled(format!("‹ {first} more  "), theme.muted()));
    }
    for (text, gauge, style) in &chips[first..last] {
        spans.push(Span::styled(text.clone(), *style));
        spans.push(Span::styled(gauge.clone(), *style));
        spans.push(Span::raw("  "));
    }
    if last < count {
        spans.push(Span::styled(format!("{} more ›  ", count - last), theme.muted()));
    }
    if first > 0 || last < count {
        // The whole deploy in one bar, since not every wave shows.
        let total = model.hosts.len();
        spans.push(Span::styled(bar(model.settled(), total, 10), theme.fg(theme.accent)));
        spans.push(Span::raw(format!(" {}/{total}", model.settled())));
    }
    Line::from(spans)
}

/// How long the wave under way has run, and a guess at the time left from the waves that
/// finished (their mean, soak included), e.g. "W3 01:12 · ETA ~04:30".
fn wave_clock(model: &DeployModel, now: DateTime<Utc>) -> Option<String> {
    let running = model.waves.iter().find(|w| w.phase == WavePhase::Running)?;
    let elapsed = now - running.started?;
    let mut text = format!("W{} {}", running.number, clock_text(elapsed));
    // A wave's time is its hosts' and its soak's (a gate's wait for a person is not a guess).
    let soak = model.soak_length.unwrap_or_else(chrono::Duration::zero);
    let spans: Vec<chrono::Duration> =
        model.waves.iter().filter_map(|w| Some(w.finished? - w.started? + soak)).collect();
    // The canary is not a batch: leave it out of the mean once a batch has finished.
    let batches: Vec<chrono::Duration> = if spans.len() > 1 { spans[1..].to_vec() } else { spans };
    if !batches.is_empty() {
        let mean = batches.iter().copied().sum::<chrono::Duration>() / batches.len() as i32;
        let after = model.waves.iter().filter(|w| w.phase == WavePhase::Pending).count() as i32;
        let left = (mean - elapsed).max(chrono::Duration::zero()) + mean * after;
        text.push_str(&format!(" · ETA ~{}", clock_text(left)));
    }
    Some(text)
}

/// Columns of the host table other than HOST and STEP, and the room STEP keeps at least.
const HOST_TABLE_FIXED: u16 = 2 + 12 + 6 + 5 + 5;
const STEP_MIN: u16 = 8;

fn draw_hosts(frame: &mut Frame, area: Rect, app: &App, model: &DeployModel, theme: &Theme, clock: Clock) {
    let visible = app.visible_hosts();
    // HOST as wide as the longest name (of all hosts, so a filter does not make it jump), as
    // long as STEP keeps its room; longer names give way in the middle.
    let spacing = 6;
    let room = area.width.saturating_sub(2 + HOST_TABLE_FIXED + spacing + STEP_MIN).max(4);
    let longest = model.hosts.iter().map(|h| h.name.chars().count()).max().unwrap_or(4).max(4);
    let host_width = (longest as u16).min(room);
    let rows_fit = layout::table_rows(area);
    let first = layout::first_visible_row(app.selected_host, rows_fit);
    let rows = visible.iter().enumerate().skip(first).take(rows_fit).map(|(pos, &i)| {
        let h = &model.hosts[i];
        // On the selection bar every word takes the bar's own colour: a state's colour on it
        // could not be read (the theme test checks the bar's contrast, not every mix).
        let selected = pos == app.selected_host;
        let ink = |style: Style| if selected { Style::default() } else { style };
        // A pause holds a host between two steps: nothing of it runs, so its clock stands still.
        let held = h.phase == HostPhase::Running
            && h.idle_since.is_some()
            && matches!(model.control, ControlView::Paused { .. });
        let (state, style) = if held {
            (format!("held {}/{}", h.step_index, h.total_steps), theme.fg(theme.warn))
        } else {
            host_state(h, theme)
        };
        let elapsed = match (h.started, h.finished.or(h.idle_since.filter(|_| held))) {
            (Some(s), Some(f)) => clock_text(f - s),
            (Some(s), None) => clock_text(clock.now - s),
            _ => String::new(),
        };
        let exit = match &h.last_result {
            Some(r) => r.exit_code().map_or_else(|| short_result(r), |c| c.to_string()),
            None => String::new(),
        };
        let health = match h.healthy {
            Some(true) => Span::styled("up", ink(theme.fg(theme.ok))),
            Some(false) => Span::styled("DOWN", ink(theme.bad())),
            None => Span::styled("–", ink(theme.muted())),
        };
        let row = Row::new(vec![
            Cell::from(crate::text::shorten_middle(&h.name, host_width as usize)),
            Cell::from(h.wave.to_string()),
            Cell::from(Span::styled(state, ink(style))),
            Cell::from(match (h.upload, &h.step) {
                (Some((sent, total)), Some(step)) if !held => format!("{step} {}%", sent * 100 / total.max(1)),
                (_, Some(step)) if held => format!("{step} ended"),
                (_, step) => step.clone().unwrap_or_default(),
            }),
            Cell::from(elapsed),
            Cell::from(exit),
            Cell::from(health),
        ]);
        if selected { row.style(theme.selection().add_modifier(Modifier::BOLD)) } else { row }
    });
    let widths = [
        Constraint::Length(host_width),
        Constraint::Length(2),
        Constraint::Length(12),
        Constraint::Min(STEP_MIN),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(5),
    ];
    let header = Row::new(vec!["HOST", "W", "STATE", "STEP", "TIME", "EXIT", "HLTH"]).style(theme.muted());
    let mut title = format!(" Hosts {}/{} ", visible.len(), model.hosts.len());
    if let Some(set) = &app.only {
        title.push_str(&format!("· {} · Esc: all ", set.label));
    }
    if !app.filter.is_empty() {
        title.push_str(&format!("· filter \"{}\" ", app.filter));
    }
    match app.sort {
        SortOrder::Plan => {}
        SortOrder::Trouble => title.push_str("· problems first "),
        SortOrder::Name => title.push_str("· by name "),
    }
    let title = fit(&title, area.width.saturating_sub(2) as usize);
    let table = Table::new(rows, widths).header(header).block(pane_block(&title, app.focus == Pane::Hosts, theme));
    frame.render_widget(table, area);
}

fn host_state(h: &HostView, theme: &Theme) -> (String, Style) {
    match h.phase {
        HostPhase::Running => {
            let retry = if h.attempt > 1 { format!(" #{}", h.attempt) } else { String::new() };
            // Far slower than the wave's other hosts at this step: worth a look before it times out.
            if h.slow {
                (format!("SLOW {}/{}{retry}", h.step_index, h.total_steps), theme.fg(theme.warn))
            } else {
                (format!("run {}/{}{retry}", h.step_index, h.total_steps), theme.fg(theme.running))
            }
        }
        HostPhase::Failed => ("FAILED".into(), theme.bad()),
        HostPhase::Done => ("done".into(), theme.fg(theme.ok)),
        HostPhase::Cancelled => ("cancelled".into(), theme.fg(theme.warn)),
        HostPhase::Waiting | HostPhase::Skipped | HostPhase::NotStarted => (phase_word(h.phase).into(), theme.muted()),
    }
}

fn draw_details(frame: &mut Frame, areas: &DeployLayout, app: &App, model: &DeployModel, theme: &Theme, clock: Clock) {
    if areas.shared_detail {
        match app.focus {
            Pane::Health => draw_health(frame, areas.health, app, model, theme),
            Pane::Timeline => draw_timeline(frame, areas.timeline, app, model, theme, clock),
            Pane::Hosts | Pane::Logs => draw_log(frame, areas.logs, app, theme, clock),
        }
    } else {
        draw_log(frame, areas.logs, app, theme, clock);
        draw_health(frame, areas.health, app, model, theme);
        draw_timeline(frame, areas.timeline, app, model, theme, clock);
    }
}

fn draw_log(frame: &mut Frame, area: Rect, app: &App, theme: &Theme, clock: Clock) {
    if app.grouped {
        return draw_groups(frame, area, app, theme);
    }
    let who =
        if app.interleaved { "all hosts".to_string() } else { app.selected_name().unwrap_or_else(|| "—".into()) };
    let mode =
        if app.log_scroll == 0 { "following".to_string() } else { format!("↑{} · End to follow", app.log_scroll) };
    let search = app.search.as_ref().map(|s| format!(" · /{s} n/N")).unwrap_or_default();
    let cut = match (app.wrap, app.log_shift) {
        (true, _) => String::new(),
        (false, 0) => " · cut, w wraps".to_string(),
        (false, shift) => format!(" · →{shift}, w wraps"),
    };
    // The step under way and how long it has run: a slow step shows before it times out.
    let selected = app.selected_name().filter(|_| !app.interleaved);
    let host = selected.as_deref().and_then(|name| app.deploy.as_ref()?.host(name)).filter(|h| h.step_running);
    let step = host
        .and_then(|h| Some(format!(" · {} {}", h.step.as_deref()?, clock_text(clock.now - h.step_started?))))
        .unwrap_or_default();
    let title = format!(" Log — {who}{step} ({mode}{search}{cut}) ");
    let block = pane_block(&title, app.focus == Pane::Logs, theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let Some(log) = app.shown_log() else { return };
    let height = inner.height as usize;
    let width = inner.width as usize;
    let len = log.len();
    let end = len.saturating_sub(app.log_scroll.min(len));
    let needle = app.search.as_ref().map(|s| s.to_lowercase());
    // From the newest line shown upwards until the pane is full: a wrapped line takes rows.
    let mut rows: Vec<Line> = Vec::new();
    let mut top = end;
    for index in (0..end).rev() {
        if rows.len() >= height {
            break;
        }
        let Some(l) = log.get(index) else { break };
        top = index;
        let mut lead = vec![Span::styled(if l.stream == Stream::Stderr { "!" } else { " " }, theme.fg(theme.stderr))];
        if app.timestamps {
            let at = l.at.with_timezone(&clock.offset).format("%H:%M:%S ").to_string();
            lead.push(Span::styled(at, theme.muted()));
        }
        if let Some(host) = &l.host {
            lead.push(Span::styled(format!("{host:<12} "), theme.fg(theme.accent)));
        }
        let lead_width: usize = lead.iter().map(|s| s.content.chars().count()).sum();
        let mut style = match (l.note, l.stream) {
            (true, Stream::Stderr) => theme.fg(theme.warn),
            (true, Stream::Stdout) => theme.muted(),
            (false, Stream::Stderr) => theme.fg(theme.stderr),
            (false, Stream::Stdout) => theme.text(),
        };
        if needle.as_ref().is_some_and(|n| l.text.to_lowercase().contains(n)) {
            style = style.add_modifier(Modifier::REVERSED);
        }
        let room = width.saturating_sub(lead_width).max(1);
        let pieces = if app.wrap { wrap_chars(&l.text, room) } else { vec![shifted(&l.text, app.log_shift, room)] };
        // The line's own rows, in order, go above those already collected.
        let mut own: Vec<Line> = Vec::new();
        for (i, piece) in pieces.into_iter().enumerate() {
            let mut spans = if i == 0 { lead.clone() } else { vec![Span::raw(" ".repeat(lead_width))] };
            spans.push(Span::styled(piece, style));
            own.push(Line::from(spans));
        }
        // Only the rows that fit: a line longer than the pane shows its end.
        let keep = own.len().min(height - rows.len());
        own.drain(..own.len() - keep);
        own.extend(rows);
        rows = own;
    }
    // At the top with older lines not in memory: say where they are.
    let unloaded = log.unloaded;
    if top == 0 && unloaded > 0 {
        let how =
            if app.log_complete { "↑ or PgUp reads them from the audit log" } else { "W writes them all to a file" };
        rows.insert(0, Line::styled(format!(" … {unloaded} older lines: {how}"), theme.muted()));
        rows.truncate(height);
    }
    frame.render_widget(Paragraph::new(rows), inner);
}

/// The wave's output grouped by shape across its hosts, one group a row, outliers first:
/// `ODD err   2/20  migrate  WARN disk 94% full on web-05`.
fn draw_groups(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let groups = app.shown_groups();
    let wave = app.group_wave().map_or_else(String::new, |w| format!("wave {w}"));
    let odd = groups.iter().filter(|g| g.outlier).count();
    // Short enough for 80 columns: "odd" is a group only a few hosts printed.
    let title = format!(" Output by shape · {wave} · {} groups · {odd} odd · Enter hosts · O log ", groups.len());
    let block = pane_block(&title, app.focus == Pane::Logs, theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if groups.is_empty() {
        frame.render_widget(Paragraph::new(Line::styled(" no output in this wave yet", theme.muted())), inner);
        return;
    }
    let height = inner.height as usize;
    let selected = app.group_at.min(groups.len() - 1);
    let first = layout::first_visible_row(selected, height);
    let step_width = groups.iter().map(|g| g.step.chars().count()).max().unwrap_or(4).clamp(4, 16);
    let rows: Vec<Line> = groups
        .iter()
        .enumerate()
        .skip(first)
        .take(height)
        .map(|(at, g)| {
            let on_bar = at == selected;
            let ink = |style: Style| if on_bar { Style::default() } else { style };
            let mark = if g.outlier { Span::styled("ODD ", ink(theme.fg(theme.warn))) } else { Span::raw("    ") };
            let stream =
                if g.stderr_only { Span::styled("err ", ink(theme.fg(theme.stderr))) } else { Span::raw("    ") };
            let count = format!("{:>4}/{:<4} ", g.hosts.len(), g.of);
            let step = format!("{:<step_width$} ", crate::text::shorten_middle(&g.step, step_width));
            let used = 8 + count.chars().count() + step.chars().count();
            let room = (inner.width as usize).saturating_sub(used).max(1);
            let example = crate::text::clean(&g.example);
            let example = if example.chars().count() > room {
                let mut cut: String = example.chars().take(room.saturating_sub(1)).collect();
                cut.push('…');
                cut
            } else {
                example
            };
            let line = Line::from(vec![
                mark,
                stream,
                Span::styled(count, ink(theme.muted())),
                Span::styled(step, ink(theme.fg(theme.accent))),
                Span::styled(example, ink(theme.text())),
            ]);
            if on_bar { line.style(theme.selection()) } else { line }
        })
        .collect();
    frame.render_widget(Paragraph::new(rows), inner);
}

/// A line cut into rows of `width` characters.
fn wrap_chars(text: &str, width: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars.chunks(width.max(1)).map(|c| c.iter().collect()).collect()
}

/// A line seen from character `shift` on, in `width` characters: `…` marks text cut off on
/// either side, so a cut line never passes for a whole one.
fn shifted(text: &str, shift: usize, width: usize) -> String {
    let total = text.chars().count();
    let shift = shift.min(total.saturating_sub(1));
    let mut shown: Vec<char> = text.chars().skip(shift).take(width).collect();
    if shift > 0 && !shown.is_empty() {
        shown[0] = '…';
    }
    if total > shift + width && !shown.is_empty() {
        let last = shown.len() - 1;
        shown[last] = '…';
    }
    shown.into_iter().collect()
}

fn draw_health(frame: &mut Frame, area: Rect, app: &App, model: &DeployModel, theme: &Theme) {
    let mut summary = Vec::new();
    for wave in &model.waves {
        let sampled: Vec<&HostView> =
            wave.hosts.iter().map(|&i| &model.hosts[i]).filter(|h| h.healthy.is_some()).collect();
        if !sampled.is_empty() {
            let up = sampled.iter().filter(|h| h.healthy == Some(true)).count();
            summary.push(format!("W{} {up}/{} up", wave.number, sampled.len()));
        }
    }
    let title =
        if summary.is_empty() { " Health ".to_string() } else { format!(" Health · {} ", summary.join(" · ")) };
    let block = pane_block(&title, app.focus == Pane::Health, theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let visible = app.visible_hosts();
    // New against old first: the fleet's verdict before any one host's.
    let mut lines = comparison_lines(model, theme, inner.width as usize);
    let rows = (inner.height as usize).saturating_sub(lines.len());
    let first = layout::first_visible_row(app.selected_host, rows);
    let spark_width = inner.width.saturating_sub(28) as usize;
    // One scale for every host, so the one that answers slowly stands out.
    let scale = visible.iter().flat_map(|&i| model.hosts[i].health.iter().rev().take(spark_width)).flatten().max();
    let scale = scale.copied().unwrap_or(1);
    let host_lines: Vec<Line> = visible
        .iter()
        .skip(first)
        .take(rows)
        .map(|&i| {
            let h = &model.hosts[i];
            let (word, style) = match h.healthy {
                Some(true) => ("up  ", theme.fg(theme.ok)),
                Some(false) => ("DOWN", theme.bad()),
                None => ("–   ", theme.muted()),
            };
            let latency = h
                .health
                .iter()
                .rev()
                .find_map(|s| *s)
                .map(|ms| format!("{ms:>5}ms"))
                .unwrap_or_else(|| "      –".into());
            Line::from(vec![
                Span::raw(format!(" {:<14}", crate::text::shorten_middle(&h.name, 13))),
                Span::styled(word, style),
                Span::raw(format!(" {latency} ")),
                Span::styled(sparkline_to(&h.health, spark_width, scale), theme.fg(theme.accent)),
            ])
        })
        .collect();
    lines.extend(host_lines);
    frame.render_widget(Paragraph::new(lines), inner);
}

/// Two lines per compared check, the hosts on the new release over those on the old, with
/// sparklines of their p95 on one scale:
/// `healthz new   3 p50   12ms p95  210ms err  0.0% ▂▃▅▇`.
fn comparison_lines(model: &DeployModel, theme: &Theme, width: usize) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    for c in &model.compared {
        let max = c.new_p95.iter().chain(&c.old_p95).flatten().copied().max().unwrap_or(1).max(1);
        let check = crate::text::shorten_middle(&crate::text::clean(&c.check), 10);
        for (label, figures, series, style) in
            [("new", &c.new, &c.new_p95, theme.fg(theme.running)), ("old", &c.old, &c.old_p95, theme.muted())]
        {
            let text = if figures.samples == 0 {
                format!(" {check:<10} {label} {:>4} hosts · no answers yet", figures.hosts)
            } else {
                format!(
                    " {check:<10} {label} {:>4} p50 {:>5}ms p95 {:>5}ms err {:>4.1}% ",
                    figures.hosts,
                    figures.p50_ms,
                    figures.p95_ms,
                    figures.errors_per_mille as f64 / 10.0
                )
            };
            let room = width.saturating_sub(text.chars().count());
            lines.push(Line::from(vec![
                Span::styled(text, style),
                Span::styled(sparkline_to(series, room, max), theme.fg(theme.accent)),
            ]));
        }
    }
    lines
}

fn draw_timeline(frame: &mut Frame, area: Rect, app: &App, model: &DeployModel, theme: &Theme, clock: Clock) {
    let block = pane_block(" Timeline ", app.focus == Pane::Timeline, theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let height = inner.height as usize;
    let len = model.timeline.len();
    let end = len.saturating_sub(app.timeline_scroll.min(len));
    let start = end.saturating_sub(height);
    let lines: Vec<Line> = model
        .timeline
        .iter()
        .skip(start)
        .take(end - start)
        .enumerate()
        .map(|(i, entry)| {
            let style = match entry.severity {
                Tone::Info => theme.text(),
                Tone::Good => theme.fg(theme.ok),
                Tone::Warn => theme.fg(theme.warn),
                Tone::Bad => theme.bad(),
            };
            // A line longer than the pane ends in `…` rather than stopping mid-word unmarked.
            let room = (inner.width as usize).saturating_sub(10);
            // With the pane focused, the newest entry shown is the one Enter opens in full; on
            // the selection bar it takes the bar's colours.
            let selected = app.focus == Pane::Timeline && start + i + 1 == end;
            let ink = |style: Style| if selected { Style::default() } else { style };
            let line = Line::from(vec![
                Span::styled(
                    format!(" {} ", entry.at.with_timezone(&clock.offset).format("%H:%M:%S")),
                    ink(theme.muted()),
                ),
                Span::styled(fit(&entry.text, room), ink(style)),
            ]);
            if selected { line.style(theme.selection()) } else { line }
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_footer(frame: &mut Frame, area: Rect, app: &App, hint: &str, theme: &Theme) {
    let line = match (&app.status, &app.busy) {
        // A status may quote a host (a refusal, a lock owner): cleaned before it reaches the terminal.
        (Some(status), _) => {
            Line::styled(format!(" {}", clean(status)), theme.fg(theme.warn).add_modifier(Modifier::BOLD))
        }
        (None, Some(busy)) => Line::styled(format!(" … {busy} · Esc cancels"), theme.fg(theme.accent)),
        (None, None) => Line::styled(format!(" {hint}"), theme.muted()),
    };
    frame.render_widget(Paragraph::new(line), area);
}

// ---------------------------------------------------------------------------------------------
// Dialogs

fn draw_dialog(frame: &mut Frame, app: &App, dialog: &Dialog, theme: &Theme) {
    let area = frame.area();
    match dialog {
        Dialog::Help { scroll } => {
            let hint = Line::styled(" ↑↓ PgUp PgDn scroll · any other key closes", theme.muted());
            text_dialog(frame, dialog, " Keys ", *scroll, hint, theme, false);
        }
        Dialog::Text { title, scroll, .. } => {
            let hint = Line::styled(" Esc close", theme.muted());
            text_dialog(frame, dialog, title, *scroll, hint, theme, false);
        }
        Dialog::ConfirmQuit => {
            let rect = layout::centered(area, 64, 8);
            let text = vec![
                Line::raw(" A deploy is running."),
                Line::raw(" d  detach: it goes on; wavedeck attach brings you back"),
                Line::styled(" a  abort it: running steps are killed, nothing new starts", theme.bad()),
                Line::raw(""),
                Line::raw(" Esc  stay"),
            ];
            popup(frame, rect, " Quit ", Paragraph::new(text), theme, true);
        }
        Dialog::Release { input, error } => {
            let env = app.target_env().map(|e| e.name.as_str()).unwrap_or("?");
            let service = app.target_profile().map(|p| p.service.as_str()).unwrap_or("?");
            // The error stands under the input it is about, wrapped if long.
            let rect = layout::centered(area, 72, if error.is_some() { 8 } else { 6 });
            let title = format!(" Deploy {service} to {env} ");
            input_popup(frame, rect, &title, "Release:", input, error.clone(), theme, false);
        }
        Dialog::ConfirmPlan { plan, scroll, .. } => {
            let keys = if plan.has_templates() {
                " Enter start · D template diffs · Esc cancel"
            } else {
                " Enter start · Esc cancel"
            };
            let hint = Line::styled(keys, theme.fg(theme.accent));
            text_dialog(frame, dialog, " Confirm plan ", *scroll, hint, theme, plan.protected);
        }
        Dialog::ConfirmTriage(commands) => {
            use crate::event::Command;
            let hosts: Vec<&str> = commands
                .iter()
                .filter_map(|c| match c {
                    Command::Skip { host } | Command::Exclude { host } => Some(host.as_str()),
                    _ => None,
                })
                .collect();
            let (title, what) = match commands.first() {
                Some(Command::Exclude { .. }) => (" Exclude ", "leave it out of this deploy: it will not start"),
                _ if hosts.len() > 1 => (" Skip ", "accept their failures and go on without them"),
                _ => (" Skip ", "accept its failure and go on without it"),
            };
            let named = match hosts.as_slice() {
                [one] => one.to_string(),
                many => format!("{} failed hosts: {}", many.len(), many.join(", ")),
            };
            let text = vec![
                Line::styled(format!(" {} {named}?", title.trim()), theme.fg(theme.warn)),
                Line::raw(format!(" {what}")),
                Line::raw(""),
                Line::raw(" y yes · Esc no"),
            ];
            let rect = layout::centered(area, 72, 6);
            popup(frame, rect, title, Paragraph::new(text).wrap(Wrap { trim: false }), theme, true);
        }
        Dialog::Resume { text, mid_step, protected, input, wrong, .. } => {
            let mut body: Vec<Line> = text.lines().map(|l| Line::raw(format!(" {l}"))).collect();
            body.push(Line::raw(""));
            let ask = match (mid_step, protected) {
                (true, false) => " r rerun the interrupted steps · s skip those hosts · f fail them · Esc cancel",
                (false, false) => " Enter resume · Esc cancel",
                (true, true) => " PROTECTED: type the name and rerun, skip or fail, then Enter · Esc cancel",
                (false, true) => " PROTECTED: type the environment's name, then Enter · Esc cancel",
            };
            body.push(Line::styled(ask, theme.fg(theme.warn)));
            if *protected {
                body.push(Line::raw(format!(" > {}", input.lines().join(""))));
            }
            if *wrong {
                body.push(Line::styled(" that is not the environment's name (or the choice is missing)", theme.bad()));
            }
            let height = (body.len() as u16 + 2).min(area.height);
            let rect = layout::centered(area, 96, height);
            popup(frame, rect, " Resume the interrupted deploy ", Paragraph::new(body), theme, true);
        }
        Dialog::TakeOver { input, wrong } => {
            let env = app.target_env().map(|e| e.name.as_str()).unwrap_or("?");
            let rect = layout::centered(area, 64, 7);
            let error = wrong.then(|| format!("that is not \"{env}\": you are still observing"));
            input_popup(
                frame,
                rect,
                " Take control ",
                &format!("The controller will be told. Type {env}:"),
                input,
                error,
                theme,
                true,
            );
        }
        Dialog::Passphrase { spec, files, input, wrong } => {
            let file = files.first().map(|f| f.display().to_string()).unwrap_or_default();
            let rect = layout::centered(area, 72, 7);
            let error = wrong.then(|| "that passphrase does not open it: try again (Esc: start nothing)".to_string());
            let label = crate::text::shorten_middle(&format!("Passphrase for {file}:"), 68);
            let title = match spec.job {
                crate::runner::Job::Rollback { .. } => " Unlock a key for this rollback ",
                _ => " Unlock a key for this deploy ",
            };
            input_popup(frame, rect, title, &label, input, error, theme, false);
        }
        Dialog::TypeName { input, wrong, .. } => {
            let env = app.target_env().map(|e| e.name.as_str()).unwrap_or("?");
            let rect = layout::centered(area, 60, 7);
            let error = wrong.then(|| format!("that is not \"{env}\": nothing was started"));
            input_popup(
                frame,
                rect,
                &format!(" {env} is PROTECTED "),
                &format!("Type {env}:"),
                input,
                error,
                theme,
                true,
            );
        }
        Dialog::ConfirmRollback { protected, input, wrong, scroll, .. } => {
            let hint = match (*protected, *wrong) {
                (_, true) => Line::styled(" that is not the environment's name: nothing was started", theme.bad()),
                (true, false) => {
                    Line::styled(" protected: type its name, then Enter · Esc cancel", theme.fg(theme.accent))
                }
                (false, false) => Line::styled(" Enter roll back · Esc cancel", theme.fg(theme.accent)),
            };
            let input_area = text_dialog(frame, dialog, " Roll back ", *scroll, hint, theme, true);
            if *protected {
                let field = Rect { x: input_area.x + 1, width: input_area.width.saturating_sub(2), ..input_area };
                frame.render_widget(input, field);
            }
        }
        Dialog::AbortReason { input, empty } => {
            let rect = layout::centered(area, 64, 7);
            let error = empty.then(|| "a reason is required: it goes to the audit log".to_string());
            input_popup(frame, rect, " Abort the deploy ", "Reason:", input, error, theme, true);
        }
        Dialog::Filter(input) | Dialog::Search(input) => {
            let label = if matches!(dialog, Dialog::Filter(_)) { "Filter hosts:" } else { "Search log:" };
            let rect = layout::centered(area, 56, 5);
            input_popup(frame, rect, " / ", label, input, None, theme, false);
        }
    }
}

/// Clears `rect` and draws a dialog's frame there (red when the action is dangerous);
/// returns the area inside it.
fn dialog_frame(frame: &mut Frame, rect: Rect, title: &str, theme: &Theme, danger: bool) -> Rect {
    frame.render_widget(Clear, rect);
    let border = if danger { theme.bad() } else { theme.border(true) };
    let block = Block::default()
        .borders(Borders::ALL)
        .border_type(BorderType::Double)
        .border_style(border)
        .title(title.to_string());
    let inner = block.inner(rect);
    frame.render_widget(block, rect);
    inner
}

/// A dialog of text that may not fit: sized to its content, scrolled from `scroll`, its title
/// saying which rows show, `hint` pinned at the bottom. Returns the pinned row above the hint
/// (for an input) when the dialog has one.
fn text_dialog(
    frame: &mut Frame,
    dialog: &Dialog,
    title: &str,
    scroll: usize,
    hint: Line,
    theme: &Theme,
    danger: bool,
) -> Rect {
    let area = frame.area();
    let Some(text) = dialog.text() else { return Rect::default() };
    let rows = prose::wrap(&text.lines, layout::text_width(area, text.width));
    let (rect, shown) = layout::text_dialog(area, text.width, rows.len(), text.pinned);
    let first = prose::clamp_scroll(scroll, rows.len(), shown);
    let title = if rows.len() > shown {
        let last = (first + shown).min(rows.len());
        format!("{title}· {}–{last} of {} · ↑↓ PgUp PgDn ", first + 1, rows.len())
    } else {
        title.to_string()
    };
    let inner = dialog_frame(frame, rect, &title, theme, danger);
    let [body, pinned] = Layout::vertical([Constraint::Min(1), Constraint::Length(text.pinned)]).areas(inner);
    let lines: Vec<Line> = rows[first..].iter().take(shown).map(|row| prose_line(row, theme)).collect();
    let text_area = Rect { x: body.x + 1, width: body.width.saturating_sub(2), ..body };
    frame.render_widget(Paragraph::new(lines), text_area);
    let [above, hint_area] = Layout::vertical([Constraint::Min(0), Constraint::Length(1)]).areas(pinned);
    frame.render_widget(Paragraph::new(hint), hint_area);
    above
}

fn prose_line(row: &Prose, theme: &Theme) -> Line<'static> {
    Line::from(row.iter().map(|(ink, text)| Span::styled(text.clone(), ink_style(*ink, theme))).collect::<Vec<_>>())
}

fn ink_style(ink: Ink, theme: &Theme) -> Style {
    match ink {
        Ink::Text => theme.text(),
        Ink::Muted => theme.muted(),
        Ink::Accent => theme.fg(theme.accent),
        Ink::Heading => theme.fg(theme.accent).add_modifier(Modifier::BOLD),
        Ink::Warn => theme.fg(theme.warn),
        Ink::Bad => theme.bad(),
    }
}

fn popup(frame: &mut Frame, rect: Rect, title: &str, body: Paragraph, theme: &Theme, danger: bool) {
    let inner = dialog_frame(frame, rect, title, theme, danger);
    frame.render_widget(body, inner);
}

#[allow(clippy::too_many_arguments)]
fn input_popup(
    frame: &mut Frame,
    rect: Rect,
    title: &str,
    label: &str,
    input: &ratatui_textarea::TextArea,
    error: Option<String>,
    theme: &Theme,
    danger: bool,
) {
    let inner = dialog_frame(frame, rect, title, theme, danger);
    let [label_area, input_area, error_area] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1), Constraint::Min(0)]).areas(inner);
    frame.render_widget(Paragraph::new(format!(" {label}")), label_area);
    let field = Rect { x: input_area.x + 1, width: input_area.width.saturating_sub(2), ..input_area };
    frame.render_widget(input, field);
    let hint = error.map_or_else(
        || Line::styled(" Enter confirm · Esc cancel", theme.muted()),
        |e| Line::styled(format!(" {e}"), theme.bad()),
    );
    frame.render_widget(Paragraph::new(hint), error_area);
}

// ---------------------------------------------------------------------------------------------
// Small pieces

fn pane_block(title: &str, focused: bool, theme: &Theme) -> Block<'static> {
    let block = Block::default().borders(Borders::ALL).border_style(theme.border(focused)).title(title.to_string());
    if focused { block.border_type(BorderType::Thick) } else { block }
}

fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = if total == 0 { 0 } else { (done * width).div_ceil(total).min(width) };
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// The last `width` latencies as block characters, on a scale whose top is `max` (shared by the
/// sparklines drawn together, so they can be compared by eye); a failed sample is `×`.
fn sparkline_to(samples: &std::collections::VecDeque<Option<u64>>, width: usize, max: u64) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let shown: Vec<Option<u64>> = samples.iter().rev().take(width).rev().copied().collect();
    let max = max.max(1);
    shown
        .iter()
        .map(|s| match s {
            Some(ms) => BLOCKS[((*ms).min(max) * 7 / max) as usize],
            None => '×',
        })
        .collect()
}

/// `text` in `width` characters: ending in `…` where it had to be cut, never silently.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    text.chars().take(width.saturating_sub(1)).chain(['…']).collect()
}

fn clock_text(d: chrono::Duration) -> String {
    let secs = d.num_seconds().max(0);
    if secs >= 3600 {
        format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    } else {
        format!("{:02}:{:02}", secs / 60, secs % 60)
    }
}

fn short_result(r: &crate::event::StepResult) -> String {
    use crate::event::StepResult;
    match r {
        StepResult::Exited { code } => code.to_string(),
        StepResult::Signalled { signal } => format!("sig{signal}"),
        StepResult::TimedOut => "tmout".into(),
        StepResult::Cancelled => "cancl".into(),
        StepResult::Skipped { .. } => "skip".into(),
        StepResult::Error { .. } => "err".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales_and_marks_failures() {
        let samples = [Some(10), Some(80), None, Some(40)].into_iter().collect();
        assert_eq!(sparkline_to(&samples, 10, 80), "▁█×▄");
        assert_eq!(sparkline_to(&samples, 2, 40), "×█", "only the last ones fit");
        assert_eq!(sparkline_to(&samples, 4, 160), "▁▄×▂", "on a shared scale a host is as high as it is slow");
    }

    #[test]
    fn a_cut_log_line_is_marked_on_the_side_it_was_cut() {
        assert_eq!(shifted("abcdefghij", 0, 4), "abc…");
        assert_eq!(shifted("abcdefghij", 3, 4), "…ef…");
        assert_eq!(shifted("abcdefghij", 6, 4), "…hij");
        assert_eq!(shifted("abc", 0, 4), "abc");
        assert_eq!(wrap_chars("abcdefghij", 4), ["abcd", "efgh", "ij"]);
    }

    #[test]
    fn bars_and_clocks() {
        assert_eq!(bar(1, 3, 6), "██░░░░");
        assert_eq!(bar(0, 0, 3), "░░░");
        assert_eq!(clock_text(chrono::Duration::seconds(3725)), "1:02:05");
        assert_eq!(clock_text(chrono::Duration::seconds(65)), "01:05");
    }
}

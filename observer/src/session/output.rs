//! What a session prints on stdout: events and lifecycle updates as they happen (text or JSON
//! lines), and the table of metric values.

use std::io::Write as _;

use super::Sink;
use crate::{
    events::Event,
    export::{self, Snapshot},
    lifecycle::Update,
};

/// The format of printed events and updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// One line per item: time, pid, tid, probe, fields.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Prints events and updates, each batch at once: its events, then the updates they caused.
#[derive(Debug, Default)]
pub struct Printer {
    pub events: bool,
    pub updates: bool,
    pub format: Format,
    event_lines: Vec<String>,
    update_lines: Vec<String>,
}

impl Printer {
    pub fn new(events: bool, updates: bool, format: Format) -> Self {
        Self {
            events,
            updates,
            format,
            event_lines: Vec::new(),
            update_lines: Vec::new(),
        }
    }

    fn render<T: serde::Serialize + std::fmt::Display>(&self, item: &T) -> String {
        match self.format {
            Format::Text => item.to_string(),
            Format::Json => serde_json::to_string(item).unwrap_or_default(),
        }
    }
}

impl Sink for Printer {
    fn event(&mut self, event: &Event) {
        if self.events {
            let line = self.render(event);
            self.event_lines.push(line);
        }
    }

    fn update(&mut self, update: &Update) {
        if self.updates {
            let line = self.render(update);
            self.update_lines.push(line);
        }
    }

    fn flush(&mut self) {
        if self.event_lines.is_empty() && self.update_lines.is_empty() {
            return;
        }
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for line in self
            .event_lines
            .drain(..)
            .chain(self.update_lines.drain(..))
        {
            // A closed stdout (e.g. `| head`) must not kill the observer mid-detach.
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}

/// Prints the table of values. On a terminal (and when nothing else is printed) it is redrawn in
/// place; piped, each table follows the last.
pub fn print_table(snapshot: &Snapshot, redraw: bool) {
    use std::io::IsTerminal as _;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let refresh = if redraw && out.is_terminal() {
        "\x1b[2J\x1b[H"
    } else {
        ""
    };
    let _ = writeln!(out, "{refresh}{}", export::format_snapshot(snapshot));
    let _ = out.flush();
}

//! Forwards the engine's `tracing` events (error counts, the degraded transition, replay
//! warnings) to SPDK's log, so that they appear in the application's output. Installed once at
//! module init; events at INFO and below are dropped.

use super::ffi::{log, Level};
use std::fmt::Write;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

struct SpdkLog;

/// Collects an event's message and fields into one line.
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl Subscriber for SpdkLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut line = Line(String::new());
        event.record(&mut line);
        let level = if *meta.level() == tracing::Level::ERROR {
            Level::Error
        } else {
            Level::Warn
        };
        log(
            level,
            meta.file().unwrap_or("engine"),
            meta.line().unwrap_or(0),
            &line.0,
        );
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Installs the forwarder as the process's global subscriber unless the application already
/// has one.
pub fn install() {
    let _ = tracing::subscriber::set_global_default(SpdkLog);
}

//! Logging: what the broker reports, and the one line format the binaries print.
//!
//! The library emits [`tracing`] events and never installs a subscriber: an embedder
//! sees them through its own (or not at all, at no cost beyond a disabled-callsite
//! check). The `procmesh` and `procmesh-launch` binaries install [`init`]: an
//! [`EnvFilter`] from `--log` / `PROCMESH_LOG` (default `info`; `warn` keeps only
//! problems, `debug` adds every broker event, per-module directives such as
//! `procmesh_broker::persistence=debug` work), a UTC timestamp, stderr.
//!
//! A line is `<RFC 3339 time> <program>: [<level>: ]<message>`, the level written only
//! when it is not `info` (`warning:`, `error:`, `debug:`), so the text after the
//! timestamp is what the binaries printed before they had levels and timestamps
//! (scripts that wait for `serving at` keep working).
//!
//! What `serve` logs at `info`: one startup line (`serving at …` with the io backend,
//! persistence on/off with its directory and fsync mode, the keys recovered and the
//! recovery time), progress while recovering a large snapshot or log (every
//! [`PROGRESS_EVERY`]), and one shutdown line (reason, uptime). Warnings: options,
//! recovery notes. Errors: persistence failures, a failed loop.

use std::fmt;
use std::time::{Duration, Instant};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The filter when neither `--log` nor `PROCMESH_LOG` says otherwise.
pub const DEFAULT_FILTER: &str = "info";

/// How often recovery reports its progress (only recoveries that take longer log it).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Records applied between two looks at the clock while recovering.
const PROGRESS_CHECK_RECORDS: u64 = 16 * 1024;

/// Installs the global subscriber of a binary called `program`: `filter` as an
/// [`EnvFilter`] directive string (`info`, `warn`, `debug`,
/// `procmesh_broker::persistence=debug,info`), lines as the module docs say, on
/// stderr. For binaries only: the library never calls it. Fails on a filter that does
/// not parse (the message says why) or when a subscriber is already installed.
pub fn init(program: &'static str, filter: &str) -> Result<(), String> {
    let filter = EnvFilter::builder()
        .parse(filter)
        .map_err(|e| format!("invalid log filter `{filter}` (--log / PROCMESH_LOG): {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed stderr (the parent went away) must not stop the broker: the
        // default would report the failed write with eprintln!, which panics then.
        .log_internal_errors(false)
        .event_format(Line { program })
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))
}

/// The line format of [`init`].
struct Line {
    program: &'static str,
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        SystemTime.format_time(&mut w)?;
        write!(w, " {}: ", self.program)?;
        match *event.metadata().level() {
            Level::ERROR => w.write_str("error: ")?,
            Level::WARN => w.write_str("warning: ")?,
            Level::INFO => {}
            Level::DEBUG => w.write_str("debug: ")?,
            Level::TRACE => w.write_str("trace: ")?,
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Progress of one recovery: logs `recovering …` at most every [`PROGRESS_EVERY`],
/// looking at the clock once per [`PROGRESS_CHECK_RECORDS`] records.
pub(crate) struct Progress {
    started: Instant,
    last: Instant,
    records: u64,
    /// Bytes of snapshot and log to read, in all.
    total_bytes: u64,
    /// Bytes of the files already read completely.
    done_bytes: u64,
}

impl Progress {
    /// Recovery of `total_bytes` of snapshot and log starts now.
    pub fn new(total_bytes: u64) -> Progress {
        let now = Instant::now();
        Progress {
            started: now,
            last: now,
            records: 0,
            total_bytes,
            done_bytes: 0,
        }
    }

    /// One record applied.
    #[inline]
    pub fn record(&mut self) {
        self.records += 1;
        if self.records.is_multiple_of(PROGRESS_CHECK_RECORDS) {
            self.maybe_log();
        }
    }

    /// A file of `bytes` has been read completely.
    pub fn file_done(&mut self, bytes: u64) {
        self.done_bytes += bytes;
        self.maybe_log();
    }

    fn maybe_log(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last) < PROGRESS_EVERY {
            return;
        }
        self.last = now;
        tracing::info!(
            "recovering: {} records applied, {} of {} MiB of snapshot and log read completely ({:.1} s)",
            self.records,
            self.done_bytes >> 20,
            self.total_bytes.div_ceil(1 << 20),
            now.duration_since(self.started).as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer into a shared buffer, for a scoped subscriber.
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `f` logs at `info` in the line format of [`init`].
    fn captured(f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_writer(move || out.clone())
            .event_format(Line {
                program: "procmesh",
            })
            .finish();
        tracing::subscriber::with_default(sub, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn recovery_reports_progress_at_most_once_per_interval() {
        let text = captured(|| {
            let mut p = Progress::new(64 << 20);
            // Within the first interval: nothing, however many records.
            for _ in 0..3 * PROGRESS_CHECK_RECORDS {
                p.record();
            }
            p.file_done(16 << 20);
            // An interval later (the clock is the thing tested; set, not slept).
            p.last -= PROGRESS_EVERY;
            p.file_done(16 << 20);
            p.file_done(0); // right after a line: none
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(
            lines[0].contains(&format!(
                "procmesh: recovering: {} records applied, 32 of 64 MiB",
                3 * PROGRESS_CHECK_RECORDS
            )),
            "{text}"
        );
        assert!(lines[0].ends_with(" s)"), "{text}");
    }

    #[test]
    fn lines_name_the_level_only_when_it_is_not_info() {
        let text = captured(|| {
            tracing::info!("serving at /s");
            tracing::warn!("careful");
            tracing::error!("broken");
            tracing::debug!("filtered out");
        });
        let tails: Vec<&str> = text
            .lines()
            .map(|l| l.split_once(' ').expect("a timestamp first").1)
            .collect();
        assert_eq!(
            tails,
            [
                "procmesh: serving at /s",
                "procmesh: warning: careful",
                "procmesh: error: broken"
            ]
        );
    }

    #[test]
    fn a_bad_filter_is_refused_with_its_text() {
        let e = init("t", "procmesh=loud").unwrap_err();
        assert!(e.contains("procmesh=loud"), "{e}");
    }
}

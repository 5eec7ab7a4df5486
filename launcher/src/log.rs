//! The launcher's log lines: the same format as the broker's (`procmesh_broker::log`,
//! which the launcher does not link): `<RFC 3339 time> procmesh-launch: [<level>: ]<msg>`
//! on stderr, filtered by `PROCMESH_LOG` (default `info`; the shards inherit it).

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Installs the subscriber: `filter` as an `EnvFilter` directive string.
pub fn init(filter: &str) -> Result<(), String> {
    let filter = EnvFilter::builder()
        .parse(filter)
        .map_err(|e| format!("invalid log filter `{filter}` (PROCMESH_LOG): {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed stderr (the parent went away) must not stop the broker: the
        // default would report the failed write with eprintln!, which panics then.
        .log_internal_errors(false)
        .event_format(Line)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))
}

struct Line;

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
        w.write_str(" procmesh-launch: ")?;
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

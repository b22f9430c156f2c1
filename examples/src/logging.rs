//! Logging set-up shared by the example workers and publishers: `RUST_LOG` (or a `--loglevel`
//! flag) chooses what is shown, colour only when standard error is a terminal.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter to log with: `flag` (a `--loglevel` value) wins over `rust_log` (`RUST_LOG`),
/// which wins over `default`. Each is a level (`info`) or comma-separated `target=level`
/// directives (`warn,events_celery=debug`). One that cannot be read gives `default` and the
/// problem, to be logged.
pub fn filter(
    default: &str,
    flag: Option<&str>,
    rust_log: Option<&str>,
) -> (Targets, Option<String>) {
    let spec = flag
        .or(rust_log.filter(|s| !s.trim().is_empty()))
        .unwrap_or(default);
    match spec.trim().parse::<Targets>() {
        Ok(filter) => (filter, None),
        Err(e) => (
            default.parse().expect("the default filter is valid"),
            Some(format!(
                "log filter `{spec}` is not valid ({e}); using `{default}`"
            )),
        ),
    }
}

/// Logs to standard error with [`filter`] over `RUST_LOG`; ANSI colours only on a terminal.
pub fn init(default: &str, flag: Option<&str>) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, problem) = filter(default, flag, rust_log.as_deref());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(filter)
        .init();
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;
    use tracing::level_filters::LevelFilter;

    #[test]
    fn the_flag_wins_over_rust_log_which_wins_over_the_default() {
        let level = |f: &Targets, target: &str| {
            [
                Level::TRACE,
                Level::DEBUG,
                Level::INFO,
                Level::WARN,
                Level::ERROR,
            ]
            .into_iter()
            .find(|l| f.would_enable(target, l))
        };
        let (f, problem) = filter("info", None, None);
        assert_eq!((level(&f, "x"), problem), (Some(Level::INFO), None));
        let (f, _) = filter("info", None, Some("debug"));
        assert_eq!(level(&f, "x"), Some(Level::DEBUG));
        let (f, _) = filter("info", Some("error"), Some("debug"));
        assert_eq!(level(&f, "x"), Some(Level::ERROR));
        let (f, _) = filter("info", None, Some("warn,events_celery=trace"));
        assert_eq!(level(&f, "events_celery::worker"), Some(Level::TRACE));
        assert_eq!(level(&f, "lapin"), Some(Level::WARN));
        let (f, problem) = filter("info", None, Some("events_celery=loud"));
        assert_eq!(level(&f, "x"), Some(Level::INFO));
        assert!(
            problem
                .unwrap()
                .contains("`events_celery=loud` is not valid")
        );
        let (f, _) = filter("info", None, Some("off"));
        assert_eq!(f.default_level(), Some(LevelFilter::OFF));
    }
}

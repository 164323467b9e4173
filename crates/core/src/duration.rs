//! Durations as people and API objects write them (`90d`, `24h`, `10m`):
//! one parser for command-line flags, CRD fields and annotations, bounded so
//! that `now + duration` can never overflow, and the two ways they are shown.

use thiserror::Error;
use time::Duration;

/// No certificate, renewal window or TTL meshroot deals in is longer; the
/// bound keeps every `now + duration` far from overflowing. 100 years of
/// 365.25 days, so `100y` (humantime's year) is accepted.
pub const MAX: Duration = Duration::days(36_525);

/// Why a duration was refused. `Display` names the field (when there is
/// one) and the value as written.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{}{value:?}: {problem}", field.map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct DurationError {
    /// The flag, field or annotation it came from.
    pub field: Option<&'static str>,
    /// The text as written.
    pub value: String,
    /// What is wrong with it.
    pub problem: DurationProblem,
}

/// What is wrong with a duration.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DurationProblem {
    /// Not a duration at all (humantime's reason).
    #[error("{0}")]
    Unreadable(String),
    /// Zero or negative.
    #[error("must be positive")]
    NotPositive,
    /// Over [`MAX`].
    #[error("is longer than the longest duration meshroot accepts (100 years)")]
    TooLong,
}

/// Parses a positive duration of at most [`MAX`].
pub fn parse(value: &str) -> Result<Duration, DurationError> {
    parse_inner(None, value)
}

/// [`parse`], but zero (`0`, `0s`) too: for settings where zero switches something off.
pub fn parse_or_zero(value: &str) -> Result<Duration, DurationError> {
    match parse(value) {
        // humantime reads no negative durations: not positive is zero.
        Err(e) if e.problem == DurationProblem::NotPositive => Ok(Duration::ZERO),
        read => read,
    }
}

/// [`parse`] for a named field, whose name the error carries.
pub fn parse_field(field: &'static str, value: &str) -> Result<Duration, DurationError> {
    parse_inner(Some(field), value)
}

fn parse_inner(field: Option<&'static str>, value: &str) -> Result<Duration, DurationError> {
    let refuse = |problem| DurationError { field, value: value.to_string(), problem };
    let std = humantime::parse_duration(value).map_err(|e| refuse(DurationProblem::Unreadable(e.to_string())))?;
    // Beyond time::Duration's range is beyond MAX too.
    let d = Duration::try_from(std).map_err(|_| refuse(DurationProblem::TooLong))?;
    if d <= Duration::ZERO {
        return Err(refuse(DurationProblem::NotPositive));
    }
    if d > MAX {
        return Err(refuse(DurationProblem::TooLong));
    }
    Ok(d)
}

/// Rounded for people at a glance: `23h 59m`, `89d 23h`, `4m 10s`.
pub fn rounded(d: Duration) -> String {
    let secs = d.whole_seconds().max(0);
    let (days, hours, minutes) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else {
        format!("{minutes}m {}s", secs % 60)
    }
}

/// Exact, for messages that explain a limit: `1year 2months 3days`.
pub fn exact(d: Duration) -> String {
    let secs = u64::try_from(d.whole_seconds()).unwrap_or(0);
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_read_only_where_it_switches_something_off() {
        assert_eq!(parse_or_zero("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_or_zero("5m").unwrap(), Duration::minutes(5));
        assert_eq!(parse("0").unwrap_err().problem, DurationProblem::NotPositive);
        assert_eq!(parse_or_zero("0s").unwrap(), Duration::ZERO);
        assert!(matches!(parse_or_zero("soon").unwrap_err().problem, DurationProblem::Unreadable(_)));
    }

    #[test]
    fn parses_positive_bounded_durations() {
        assert_eq!(parse("24h").unwrap(), Duration::hours(24));
        assert_eq!(parse("90d").unwrap(), Duration::days(90));
        assert_eq!(parse("36525d").unwrap(), MAX);
        assert_eq!(parse("100y").unwrap(), MAX);
        assert_eq!(parse("0s").unwrap_err().problem, DurationProblem::NotPositive);
        assert_eq!(parse("36526d").unwrap_err().problem, DurationProblem::TooLong);
        let huge = parse("99999999999999999999s").unwrap_err().problem;
        assert!(matches!(&huge, DurationProblem::Unreadable(m) if m.contains("too large")), "{huge:?}");
        assert!(matches!(parse("soon").unwrap_err().problem, DurationProblem::Unreadable(_)));
    }

    #[test]
    fn errors_name_the_field_and_the_value() {
        assert_eq!(parse("0s").unwrap_err().to_string(), r#""0s": must be positive"#);
        assert_eq!(
            parse_field("spec.duration", "200y").unwrap_err().to_string(),
            r#"spec.duration: "200y": is longer than the longest duration meshroot accepts (100 years)"#
        );
    }

    #[test]
    fn shows_durations_rounded_and_exact() {
        assert_eq!(rounded(Duration::hours(24) - Duration::minutes(1)), "23h 59m");
        assert_eq!(rounded(Duration::days(90)), "90d 0h");
        assert_eq!(rounded(Duration::seconds(250)), "4m 10s");
        assert_eq!(exact(Duration::hours(25)), "1day 1h");
        assert_eq!(exact(Duration::seconds(-5)), "0s");
    }
}

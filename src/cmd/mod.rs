//! The command-line commands, as library functions so tests can run them.

pub mod dev;
pub mod pki_init;
pub mod request;
pub mod root;
pub mod serve;

/// Parses durations such as `24h`, `90d` or `1h30m`.
pub fn parse_duration(s: &str) -> Result<time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    let d = time::Duration::try_from(d).map_err(|e| format!("{s:?}: {e}"))?;
    if d <= time::Duration::ZERO {
        return Err(format!("{s:?}: must be positive"));
    }
    Ok(d)
}

/// Formats a lifetime for people: `23h 59m`, `89d 23h`.
pub fn human_duration(d: time::Duration) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), time::Duration::hours(24));
        assert_eq!(parse_duration("90d").unwrap(), time::Duration::days(90));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(human_duration(time::Duration::hours(24) - time::Duration::minutes(1)), "23h 59m");
        assert_eq!(human_duration(time::Duration::days(90)), "90d 0h");
    }
}

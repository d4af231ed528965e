//! Human-friendly sizes ("64KiB") and durations ("10s", "400d") used in the config file and CLI.

use std::time::Duration;

use crate::base::ConfigError;

/// The leading whole number of `text` and the rest after it; `None` when it does not start with
/// one that fits in a `u64`.
fn number_and_unit(text: &str) -> Option<(u64, &str)> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    Some((number.parse().ok()?, unit))
}

/// Parses a byte size: a whole number with an optional unit B, KB/KiB, MB/MiB, GB/GiB
/// (decimal units are powers of 1000, binary ones of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) =
        number_and_unit(text).ok_or_else(|| format!("`{text}` is not a size like 64KiB or 1MB"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1000,
        "kib" => 1024,
        "mb" | "m" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "gb" | "g" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        _ => {
            return Err(format!(
                "`{text}` has an unknown size unit (use B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses a duration: a whole number followed by ms, s, m, h, d or w.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = number_and_unit(text)
        .ok_or_else(|| format!("`{text}` is not a duration like 500ms, 10s, 5m, 24h or 400d"))?;
    let seconds_per_unit: u64 = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "`{text}` needs a unit: ms, s, m, h, d or w (e.g. 10s)"
            ))
        }
    };
    number
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// A duration the way the config writes it: 400d, 10s, 250ms.
pub fn format_duration(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs();
    if duration.subsec_nanos() != 0 || seconds == 0 {
        return format!("{}ms", duration.as_millis());
    }
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if seconds % size == 0 {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

pub(crate) fn duration_or(
    location: &str,
    text: Option<&str>,
    default: Duration,
    errors: &mut Vec<ConfigError>,
) -> Duration {
    match text {
        None => default,
        Some(text) => parse_duration(text).unwrap_or_else(|message| {
            errors.push(ConfigError::new(location, message));
            default
        }),
    }
}

/// [`duration_or`] for settings that must be longer than zero (intervals, periods).
pub(crate) fn positive_duration_or(
    location: &str,
    text: Option<&str>,
    default: Duration,
    errors: &mut Vec<ConfigError>,
) -> Duration {
    let duration = duration_or(location, text, default, errors);
    if duration.is_zero() {
        errors.push(ConfigError::new(location, "must be longer than 0"));
        return default;
    }
    duration
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(
            parse_duration("400d"),
            Ok(Duration::from_secs(400 * 86_400))
        );
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}

//! Timestamp and duration formats of the Prometheus and Loki HTTP APIs.

use std::time::{SystemTime, UNIX_EPOCH};

/// A time or duration string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse {what} {input:?}: {reason}")]
pub struct TimeError {
    /// What was being parsed ("time", "duration", …).
    pub what: &'static str,
    /// The offending input (truncated).
    pub input: String,
    /// Why it failed.
    pub reason: &'static str,
}

fn terr(what: &'static str, input: &str, reason: &'static str) -> TimeError {
    TimeError { what, input: input.chars().take(100).collect(), reason }
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    now_ns() / 1_000_000
}

/// Parses a Prometheus duration such as `5m`, `1h30m`, `250ms`, `2d`
/// (units ms, s, m, h, d, w, y; a year is 365 days) into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64, TimeError> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(terr("duration", s, "empty"));
    }
    let mut i = 0;
    let mut total: i64 = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(terr("duration", s, "expected a number"));
        }
        let n: i64 = s[start..i].parse().map_err(|_| terr("duration", s, "number too large"))?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let mult: i64 = match &s[ustart..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            "" => return Err(terr("duration", s, "missing unit (ms, s, m, h, d, w, y)")),
            _ => return Err(terr("duration", s, "unknown unit (ms, s, m, h, d, w, y)")),
        };
        total =
            n.checked_mul(mult).and_then(|v| total.checked_add(v)).ok_or_else(|| terr("duration", s, "too large"))?;
    }
    Ok(total)
}

/// Formats milliseconds as a Prometheus duration (`1h30m`, `250ms`, `0s`).
pub fn format_duration_ms(mut ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    if ms < 0 {
        out.push('-');
        ms = -ms;
    }
    for (unit, size) in [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{}", ms / size, unit));
            ms %= size;
        }
    }
    out
}

/// Parses an RFC 3339 timestamp (`2026-11-24T08:00:00Z`,
/// `2026-11-24T08:00:00.123+01:00`) into nanoseconds since the epoch.
pub fn parse_rfc3339_ns(s: &str) -> Result<i64, TimeError> {
    let e = |r| terr("RFC 3339 time", s, r);
    let b = s.as_bytes();
    if b.len() < 20 {
        return Err(e("too short"));
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, TimeError> {
        let part = s.get(r).ok_or_else(|| e("bad layout"))?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(e("expected digits"));
        }
        part.parse::<i64>().map_err(|_| e("expected digits"))
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(e("expected YYYY-MM-DDTHH:MM:SS"));
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return Err(e("field out of range"));
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(e("empty fraction"));
        }
        let frac = &s[start..i.min(start + 9)];
        nanos = frac.parse::<i64>().map_err(|_| e("bad fraction"))? * 10i64.pow(9 - frac.len() as u32);
    }
    let offset_s: i64 = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(&c @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let v = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if c == b'+' { v } else { -v }
        }
        _ => return Err(e("expected Z or ±HH:MM zone")),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_s;
    secs.checked_mul(1_000_000_000).and_then(|v| v.checked_add(nanos)).ok_or_else(|| e("out of range"))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats nanoseconds since the epoch as RFC 3339 in UTC with nanoseconds
/// (`2026-11-24T08:00:00.000000001Z`), trailing zeros of the fraction removed.
pub fn format_rfc3339_ns(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // civil_from_days
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut out = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", sod / 3600, (sod / 60) % 60, sod % 60);
    if frac != 0 {
        let f = format!("{frac:09}");
        out.push('.');
        out.push_str(f.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Parses a Prometheus API time parameter (RFC 3339 or float Unix seconds)
/// into milliseconds.
pub fn parse_prom_time_ms(s: &str) -> Result<i64, TimeError> {
    let s = s.trim();
    if let Ok(f) = s.parse::<f64>() {
        if !f.is_finite() {
            return Err(terr("time", s, "not a finite number"));
        }
        let ms = (f * 1000.0).round();
        if ms.abs() > 9.2e15 {
            return Err(terr("time", s, "out of range"));
        }
        return Ok(ms as i64);
    }
    parse_rfc3339_ns(s)
        .map(|ns| ns.div_euclid(1_000_000))
        .map_err(|_| terr("time", s, "expected RFC 3339 or Unix seconds"))
}

/// Parses a Prometheus step or duration parameter (float seconds or a
/// duration such as `30s`) into milliseconds.
pub fn parse_prom_duration_ms(s: &str) -> Result<i64, TimeError> {
    let s = s.trim();
    if let Ok(f) = s.parse::<f64>() {
        if !f.is_finite() || f.abs() > 9.2e12 {
            return Err(terr("duration", s, "out of range"));
        }
        return Ok((f * 1000.0).round() as i64);
    }
    parse_duration_ms(s)
}

/// Parses a Loki API time parameter into nanoseconds, as Loki does: a number
/// with a `.` is float seconds; an integer of up to 10 digits is seconds and
/// a longer one nanoseconds; otherwise RFC 3339.
pub fn parse_loki_time_ns(s: &str) -> Result<i64, TimeError> {
    let s = s.trim();
    if s.contains('.')
        && let Ok(f) = s.parse::<f64>()
    {
        if !f.is_finite() || f.abs() > 9.2e9 {
            return Err(terr("time", s, "out of range"));
        }
        let secs = f.trunc();
        let frac = ((f - secs) * 1e3).round() / 1e3;
        return Ok(secs as i64 * 1_000_000_000 + (frac * 1e9) as i64);
    }
    match s.parse::<i64>() {
        Ok(n) if s.trim_start_matches('-').len() <= 10 => {
            n.checked_mul(1_000_000_000).ok_or_else(|| terr("time", s, "out of range"))
        }
        Ok(n) => Ok(n),
        Err(_) => {
            parse_rfc3339_ns(s).map_err(|_| terr("time", s, "expected Unix nanoseconds, Unix seconds or RFC 3339"))
        }
    }
}

/// Parses a Loki step/interval parameter (float seconds or a duration) into
/// nanoseconds.
pub fn parse_loki_duration_ns(s: &str) -> Result<i64, TimeError> {
    parse_prom_duration_ms(s)
        .and_then(|ms| ms.checked_mul(1_000_000).ok_or_else(|| terr("duration", s, "out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("5m").unwrap(), 300_000);
        assert_eq!(parse_duration_ms("1h30m").unwrap(), 5_400_000);
        assert_eq!(parse_duration_ms("250ms").unwrap(), 250);
        assert!(parse_duration_ms("5").is_err());
        assert!(parse_duration_ms("m").is_err());
        assert!(parse_duration_ms("5x").is_err());
        assert!(parse_duration_ms("99999999999999999y").is_err());
        assert_eq!(format_duration_ms(5_400_000), "1h30m");
        assert_eq!(format_duration_ms(0), "0s");
        assert_eq!(parse_prom_duration_ms("15").unwrap(), 15_000);
        assert_eq!(parse_prom_duration_ms("0.5").unwrap(), 500);
        assert_eq!(parse_loki_duration_ns("30000ms").unwrap(), 30_000_000_000);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_rfc3339_ns("2015-07-01T20:10:51.781Z").unwrap(), 1_435_781_451_781_000_000);
        assert_eq!(parse_rfc3339_ns("2015-07-01T22:10:51.781+02:00").unwrap(), 1_435_781_451_781_000_000);
        assert_eq!(format_rfc3339_ns(1_435_781_451_781_000_000), "2015-07-01T20:10:51.781Z");
        assert_eq!(format_rfc3339_ns(0), "1970-01-01T00:00:00Z");
        for bad in [
            "2015-07-01",
            "2015-13-01T00:00:00Z",
            "2015-07-01T00:00:00",
            "xxxx-07-01T00:00:00Z",
            "2015-07-01T00:00:00.Z",
        ] {
            assert!(parse_rfc3339_ns(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_times() {
        assert_eq!(parse_prom_time_ms("1435781451.781").unwrap(), 1_435_781_451_781);
        assert_eq!(parse_prom_time_ms("2015-07-01T20:10:51.781Z").unwrap(), 1_435_781_451_781);
        assert!(parse_prom_time_ms("yesterday").is_err());
        assert_eq!(parse_loki_time_ns("1435781451").unwrap(), 1_435_781_451_000_000_000);
        assert_eq!(parse_loki_time_ns("1435781451781000000").unwrap(), 1_435_781_451_781_000_000);
        assert_eq!(parse_loki_time_ns("1435781451.781").unwrap(), 1_435_781_451_781_000_000);
        assert_eq!(parse_loki_time_ns("2015-07-01T20:10:51.781Z").unwrap(), 1_435_781_451_781_000_000);
        assert!(parse_loki_time_ns("nope").is_err());
    }
}

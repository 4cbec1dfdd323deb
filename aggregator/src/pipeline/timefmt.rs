//! Time formats of the `timestamp` stage: names (`RFC3339`, `Unix`, Go's
//! named layouts), Go reference layouts (`2006-01-02 15:04:05.000`) and
//! strftime formats (`%Y-%m-%d %H:%M:%S`), parsed with `jiff`; a value
//! without a zone is read in the stage's `location`.

use jiff::civil::DateTime;
use jiff::fmt::strtime::BrokenDownTime;
use jiff::tz::{Offset, TimeZone};

/// A compiled time format.
#[derive(Debug, Clone, PartialEq)]
pub enum TimeFormat {
    /// RFC 3339 with or without fraction (`RFC3339`, `RFC3339Nano`).
    Rfc3339,
    /// Seconds since the epoch, possibly with a fraction (`Unix`).
    UnixSeconds,
    /// Integer ms, µs or ns since the epoch (`UnixMs`, `UnixUs`, `UnixNs`):
    /// nanoseconds per unit.
    UnixInt(i64),
    /// A strftime format (converted from a Go layout when given as one).
    Strftime {
        /// The format, jiff's strtime syntax.
        format: String,
        /// The format names no year: the current one is assumed.
        has_year: bool,
    },
}

/// Go's named layouts (package `time`), as Promtail accepts them.
const GO_NAMED: [(&str, &str); 15] = [
    ("ANSIC", "Mon Jan _2 15:04:05 2006"),
    ("UnixDate", "Mon Jan _2 15:04:05 MST 2006"),
    ("RubyDate", "Mon Jan 02 15:04:05 -0700 2006"),
    ("RFC822", "02 Jan 06 15:04 MST"),
    ("RFC822Z", "02 Jan 06 15:04 -0700"),
    ("RFC850", "Monday, 02-Jan-06 15:04:05 MST"),
    ("RFC1123", "Mon, 02 Jan 2006 15:04:05 MST"),
    ("RFC1123Z", "Mon, 02 Jan 2006 15:04:05 -0700"),
    ("Kitchen", "3:04PM"),
    ("Stamp", "Jan _2 15:04:05"),
    ("StampMilli", "Jan _2 15:04:05.000"),
    ("StampMicro", "Jan _2 15:04:05.000000"),
    ("StampNano", "Jan _2 15:04:05.000000000"),
    ("DateTime", "2006-01-02 15:04:05"),
    ("DateOnly", "2006-01-02"),
];

/// Go layout elements and their strftime equivalents, longest first where
/// one is a prefix of another.
const GO_TOKENS: [(&str, &str); 30] = [
    ("January", "%B"),
    ("Monday", "%A"),
    ("Z07:00", "%:z"),
    ("-07:00", "%:z"),
    ("Z0700", "%z"),
    ("-0700", "%z"),
    ("2006", "%Y"),
    ("Jan", "%b"),
    ("Mon", "%a"),
    ("MST", "%Q"),
    ("-07", "%:::z"),
    ("002", "%j"),
    ("_2", "%e"),
    ("01", "%m"),
    ("02", "%d"),
    ("03", "%I"),
    ("04", "%M"),
    ("05", "%S"),
    ("06", "%y"),
    ("15", "%H"),
    ("PM", "%p"),
    ("pm", "%P"),
    ("1", "%-m"),
    ("2", "%-d"),
    ("3", "%-I"),
    ("4", "%-M"),
    ("5", "%-S"),
    ("%", "%%"),
    ("\t", "%t"),
    ("\n", "%n"),
];

/// Converts a Go reference layout to a strftime format.
pub fn go_layout_to_strftime(layout: &str) -> String {
    let mut out = String::with_capacity(layout.len() * 2);
    let mut rest = layout;
    'outer: while !rest.is_empty() {
        // Fractional seconds: `.000…` / `,000…` (fixed) or `.999…` (trimmed).
        for sep in ['.', ','] {
            if let Some(after) = rest.strip_prefix(sep) {
                let n = after.bytes().take_while(|&b| b == b'0' || b == b'9').count();
                if n > 0 && after.as_bytes()[..n].iter().all(|&b| b == after.as_bytes()[0]) {
                    out.push_str(if sep == '.' { "%.f" } else { ",%f" });
                    rest = &after[n..];
                    continue 'outer;
                }
            }
        }
        for (go, st) in GO_TOKENS {
            if let Some(after) = rest.strip_prefix(go) {
                out.push_str(st);
                rest = after;
                continue 'outer;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

impl TimeFormat {
    /// Compiles a format given by name, Go layout, or strftime (`%` in it).
    pub fn new(spec: &str) -> Result<TimeFormat, String> {
        let f = match spec {
            "RFC3339" | "RFC3339Nano" | "rfc3339" | "rfc3339nano" => return Ok(TimeFormat::Rfc3339),
            "Unix" | "unix" => return Ok(TimeFormat::UnixSeconds),
            "UnixMs" | "unix_ms" => return Ok(TimeFormat::UnixInt(1_000_000)),
            "UnixUs" | "unix_us" => return Ok(TimeFormat::UnixInt(1_000)),
            "UnixNs" | "unix_ns" => return Ok(TimeFormat::UnixInt(1)),
            "" => return Err("empty time format".into()),
            s if s.contains('%') => s.to_string(),
            s => {
                let layout = GO_NAMED.iter().find(|(n, _)| *n == s).map(|(_, l)| *l).unwrap_or(s);
                go_layout_to_strftime(layout)
            }
        };
        // A format with no conversion at all is a typo, not a layout.
        if !f.contains('%') {
            return Err(format!("time format {spec:?} is neither a known name nor a Go layout or strftime format"));
        }
        // Validate the format by formatting a fixed instant with it.
        let probe = jiff::Timestamp::UNIX_EPOCH.to_zoned_datetime(TimeZone::UTC);
        let mut buf = String::new();
        BrokenDownTime::from(&probe)
            .format(&f, &mut buf)
            .map_err(|e| format!("invalid time format {spec:?} (as strftime {f:?}): {e}"))?;
        let has_year = ["%Y", "%y", "%C", "%G", "%g", "%s", "%F", "%D", "%c", "%x"].iter().any(|d| f.contains(d));
        Ok(TimeFormat::Strftime { format: f, has_year })
    }

    /// Parses `s` into ns since the epoch; a value without a zone is read in
    /// `tz`, one without a year in the year of `now_ns` (or the year before,
    /// when that would put it more than a day in the future, as syslog
    /// lines read just after New Year need).
    pub fn parse(&self, s: &str, tz: &TimeZone, now_ns: i64) -> Option<i64> {
        let s = s.trim();
        match self {
            TimeFormat::Rfc3339 => cairn_wire::time::parse_rfc3339_ns(s).ok().or_else(|| {
                // Without a zone: read in `tz`.
                let tm = BrokenDownTime::parse("%Y-%m-%dT%H:%M:%S%.f", s).ok()?;
                to_ns(tz, tm.to_datetime().ok()?)
            }),
            TimeFormat::UnixSeconds => {
                let (int, frac) = s.split_once('.').unwrap_or((s, ""));
                let secs: i64 = int.parse().ok()?;
                if !frac.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let digits = &frac[..frac.len().min(9)];
                let mut nanos: i64 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
                nanos *= 10i64.pow(9 - digits.len() as u32);
                let nanos = if secs < 0 || int.starts_with('-') { -nanos } else { nanos };
                secs.checked_mul(1_000_000_000)?.checked_add(nanos)
            }
            TimeFormat::UnixInt(unit) => s.parse::<i64>().ok()?.checked_mul(*unit),
            TimeFormat::Strftime { format, has_year } => {
                let mut tm = BrokenDownTime::parse(format, s).ok()?;
                if let Some(ts) = tm.timestamp() {
                    return i64::try_from(ts.as_nanosecond()).ok();
                }
                let now_year = jiff::Timestamp::from_nanosecond(now_ns as i128).ok()?.to_zoned_datetime(tz.clone());
                let now_year = now_year.year();
                if !has_year || tm.year().is_none() {
                    tm.set_year(Some(now_year)).ok()?;
                }
                let zone = |tm: &BrokenDownTime| -> Option<i64> {
                    let dt = tm.to_datetime().ok()?;
                    if let Some(off) = tm.offset() {
                        return i64::try_from(off.to_timestamp(dt).ok()?.as_nanosecond()).ok();
                    }
                    if let Some(name) = tm.iana_time_zone() {
                        return to_ns(&TimeZone::get(name).ok()?, dt);
                    }
                    to_ns(tz, dt)
                };
                let ns = zone(&tm)?;
                if !has_year && ns > now_ns.saturating_add(86_400_000_000_000) {
                    tm.set_year(Some(now_year - 1)).ok()?;
                    return zone(&tm);
                }
                Some(ns)
            }
        }
    }
}

fn to_ns(tz: &TimeZone, dt: DateTime) -> Option<i64> {
    i64::try_from(tz.to_timestamp(dt).ok()?.as_nanosecond()).ok()
}

/// Resolves a `location`: an IANA name (`Europe/Berlin`, from the system's
/// zoneinfo or the copy built in), `UTC`, `Local`, or a fixed offset
/// (`+02:00`, `-0530`).
pub fn location(name: &str) -> Result<TimeZone, String> {
    match name {
        "" | "UTC" | "utc" => return Ok(TimeZone::UTC),
        "Local" | "local" => return Ok(TimeZone::system()),
        _ => {}
    }
    if let Some(sign) = name.strip_prefix(['+', '-']).map(|_| if name.starts_with('-') { -1 } else { 1 }) {
        let digits: String = name[1..].chars().filter(|c| *c != ':').collect();
        if digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit()) {
            let h: i32 = digits[..2].parse().map_err(|_| format!("bad offset {name:?}"))?;
            let m: i32 = digits[2..].parse().map_err(|_| format!("bad offset {name:?}"))?;
            let off =
                Offset::from_seconds(sign * (h * 3600 + m * 60)).map_err(|e| format!("bad offset {name:?}: {e}"))?;
            return Ok(TimeZone::fixed(off));
        }
        return Err(format!("bad offset {name:?}: want ±HH:MM"));
    }
    TimeZone::get(name).map_err(|e| format!("unknown time zone {name:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_732_440_000_000_000_000; // 2024-11-24T09:20:00Z

    fn p(spec: &str, s: &str, tz: &str) -> Option<i64> {
        TimeFormat::new(spec).unwrap().parse(s, &location(tz).unwrap(), NOW)
    }

    fn rfc(s: &str) -> i64 {
        cairn_wire::time::parse_rfc3339_ns(s).unwrap()
    }

    #[test]
    fn named_and_unix_formats() {
        assert_eq!(p("RFC3339", "2024-05-01T10:00:00Z", "UTC"), Some(rfc("2024-05-01T10:00:00Z")));
        assert_eq!(
            p("RFC3339Nano", "2024-05-01T10:00:00.123456789+02:00", "UTC"),
            Some(rfc("2024-05-01T08:00:00.123456789Z"))
        );
        // No zone in the value: read in the location.
        assert_eq!(p("RFC3339", "2024-05-01T10:00:00", "Europe/Berlin"), Some(rfc("2024-05-01T08:00:00Z")));
        assert_eq!(p("Unix", "1714557600", "UTC"), Some(1_714_557_600_000_000_000));
        assert_eq!(p("Unix", "1714557600.5", "UTC"), Some(1_714_557_600_500_000_000));
        assert_eq!(p("UnixMs", "1714557600123", "UTC"), Some(1_714_557_600_123_000_000));
        assert_eq!(p("UnixUs", "1714557600123456", "UTC"), Some(1_714_557_600_123_456_000));
        assert_eq!(p("UnixNs", "1714557600123456789", "UTC"), Some(1_714_557_600_123_456_789));
        assert_eq!(p("Unix", "17x", "UTC"), None);
        assert_eq!(p("UnixMs", "", "UTC"), None);
        assert_eq!(p("RFC1123Z", "Wed, 01 May 2024 10:00:00 +0200", "UTC"), Some(rfc("2024-05-01T08:00:00Z")));
        assert_eq!(p("RFC1123", "Wed, 01 May 2024 10:00:00 UTC", "Europe/Berlin"), Some(rfc("2024-05-01T10:00:00Z")));
        assert_eq!(p("ANSIC", "Wed May  1 10:00:00 2024", "UTC"), Some(rfc("2024-05-01T10:00:00Z")));
    }

    #[test]
    fn go_layouts_and_strftime_with_zones() {
        assert_eq!(go_layout_to_strftime("2006-01-02T15:04:05.000Z07:00"), "%Y-%m-%dT%H:%M:%S%.f%:z");
        assert_eq!(go_layout_to_strftime("02/Jan/2006:15:04:05 -0700"), "%d/%b/%Y:%H:%M:%S %z");
        let want = Some(rfc("2024-05-01T08:00:00.250Z"));
        assert_eq!(p("2006-01-02 15:04:05.000", "2024-05-01 10:00:00.250", "Europe/Berlin"), want);
        assert_eq!(p("2006-01-02 15:04:05.000", "2024-05-01 10:00:00.250", "+02:00"), want);
        assert_eq!(p("%Y-%m-%d %H:%M:%S%.f", "2024-05-01 10:00:00.250", "Europe/Berlin"), want);
        assert_eq!(p("%d/%b/%Y:%H:%M:%S %z", "01/May/2024:10:00:00 +0200", "UTC"), Some(rfc("2024-05-01T08:00:00Z")));
        assert_eq!(
            p("02/Jan/2006:15:04:05 -0700", "01/May/2024:10:00:00 +0200", "UTC"),
            Some(rfc("2024-05-01T08:00:00Z"))
        );
        // Winter time in Berlin is +01:00.
        assert_eq!(p("DateTime", "2024-01-15 10:00:00", "Europe/Berlin"), Some(rfc("2024-01-15T09:00:00Z")));
        // No year (syslog): this year, or last year when that would be in the future.
        assert_eq!(p("Stamp", "May  1 10:00:00", "UTC"), Some(rfc("2024-05-01T10:00:00Z")));
        assert_eq!(p("Jan _2 15:04:05", "Dec 31 23:00:00", "UTC"), Some(rfc("2023-12-31T23:00:00Z")));
        assert_eq!(p("%b %e %H:%M:%S", "Nov 24 09:00:00", "UTC"), Some(rfc("2024-11-24T09:00:00Z")));
        assert_eq!(p("2006-01-02", "not a date", "UTC"), None);
        assert!(TimeFormat::new("nonsense").is_err());
        assert!(TimeFormat::new("%Y-%!").is_err());
        assert!(location("Mars/Olympus").is_err());
        assert!(location("+2").is_err());
        assert_eq!(p("%s", "1714557600", "UTC"), Some(1_714_557_600_000_000_000));
    }
}

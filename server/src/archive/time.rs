//! Wall-clock instants as the rules keep them (milliseconds since 1970-01-01 UTC) and as the
//! API writes them (RFC 3339, UTC).

/// Now, in milliseconds since 1970-01-01 UTC.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// `ms` moved `years` calendar years on: the same month, day and time of day; 29 February
/// moves to 1 March when the target year has no leap day (later, never earlier).
pub fn add_years_ms(ms: i64, years: u32) -> i64 {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, mo, d) = civil_from_days(days);
    let year = y + i64::from(years);
    let target = if d > days_in_month(year, mo) {
        days_from_civil(year, mo, days_in_month(year, mo)) + 1
    } else {
        days_from_civil(year, mo, d)
    };
    target * 86_400_000 + in_day
}

/// The start (00:00 UTC) of a DICOM DA value's day (`YYYYMMDD`, surrounding spaces allowed);
/// `None` for an empty, partial or impossible date.
pub fn dicom_date_ms(da: &str) -> Option<i64> {
    let da = da.trim();
    if da.len() != 8 || !da.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let year: i64 = da[0..4].parse().ok()?;
    let month: u32 = da[4..6].parse().ok()?;
    let day: u32 = da[6..8].parse().ok()?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400_000)
}

/// `2026-11-26T10:00:00.123Z` (always UTC, always milliseconds).
pub fn format_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// Parses an RFC 3339 instant (`YYYY-MM-DDThh:mm:ss[.fff…](Z|±hh:mm)`) or a date
/// (`YYYY-MM-DD`, meaning its start in UTC) into milliseconds since 1970-01-01 UTC.
pub fn parse_ms(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not a time: expected YYYY-MM-DD or YYYY-MM-DDThh:mm:ssZ");
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Result<u32, String> {
        let part = text.get(range).ok_or_else(bad)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (year, month, day) = (i64::from(num(0..4)?), num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(bad());
    }
    let mut ms = days_from_civil(year, month, day) * 86_400_000;
    if b.len() == 10 {
        return Ok(ms);
    }
    if b.len() < 20 || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    ms += i64::from(h * 3600 + mi * 60 + s.min(59)) * 1000;
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let mut millis = 0u32;
        for (i, c) in fraction.bytes().take(3).enumerate().take(digits) {
            millis += u32::from(c - b'0') * [100, 10, 1][i];
        }
        ms += i64::from(millis);
        rest = &fraction[digits..];
    }
    match rest {
        "Z" | "z" => Ok(ms),
        zone if zone.len() == 6 && matches!(zone.as_bytes()[0], b'+' | b'-') => {
            let zh = num(text.len() - 5..text.len() - 3)?;
            let zm = num(text.len() - 2..text.len())?;
            if zone.as_bytes()[3] != b':' || zh > 23 || zm > 59 {
                return Err(bad());
            }
            let offset = i64::from(zh * 60 + zm) * 60_000;
            Ok(if zone.starts_with('+') {
                ms - offset
            } else {
                ms + offset
            })
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_instants() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_764_115_200_123), "2025-11-26T00:00:00.123Z");
        assert_eq!(parse_ms("2025-11-26T00:00:00.123Z"), Ok(1_764_115_200_123));
        assert_eq!(parse_ms("2025-11-26"), Ok(1_764_115_200_000));
        assert_eq!(parse_ms("2025-11-26T02:00:00+02:00"), Ok(1_764_115_200_000));
        assert_eq!(
            parse_ms("2025-11-25T23:00:00.5-01:00"),
            Ok(1_764_115_200_500)
        );
        assert_eq!(
            parse_ms("2024-02-29"),
            Ok(days_from_civil(2024, 2, 29) * 86_400_000)
        );
        for bad in [
            "",
            "2025-13-01",
            "2023-02-29",
            "2025-11-26T24:00:00Z",
            "2025-11-26T10:00:00",
            "2025-11-26 10:00:00Z",
            "2025-11-26T10:00:00.Z",
            "26.11.2025",
            "2025-11-26T10:00:00+2:00",
        ] {
            assert!(parse_ms(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn days_round_trip() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!(d >= 1 && d <= days_in_month(y, m));
        }
    }
}

//! Calendar conversions the SDKs and CLI need and nothing more: POSIX seconds to RFC 3339 UTC
//! text (for printing collection intervals) and HTTP-dates to POSIX seconds (for
//! `Retry-After`). A date library would be a large dependency for two small functions.

/// Seconds since the Unix epoch, now; zero if the clock is before 1970.
pub fn now_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a POSIX timestamp.
pub fn rfc3339(seconds: u64) -> String {
    let days = (seconds / 86400) as i64;
    let rem = seconds % 86400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];

/// Parses an HTTP-date in any of the three forms RFC 9110 (Section 5.6.7) tells recipients to
/// accept: IMF-fixdate, the obsolete RFC 850 form and asctime.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let tokens: Vec<&str> = s.split([' ', ',', '-', ':']).filter(|t| !t.is_empty()).collect();
    let month_of = |t: &str| MONTHS.iter().position(|m| t.eq_ignore_ascii_case(m)).map(|i| i as u32 + 1);
    let num = |t: &str| t.parse::<u32>().ok();
    // tokens[0] is the weekday, which carries no information.
    let (year, month, day, hms) = if let Some(month) = tokens.get(1).and_then(|t| month_of(t)) {
        // asctime: "Sun Nov  6 08:49:37 1994"
        (i64::from(num(tokens.get(6)?)?), month, num(tokens.get(2)?)?, tokens.get(3..6)?)
    } else {
        // IMF-fixdate "Sun, 06 Nov 1994 08:49:37 GMT" or RFC 850 "Sunday, 06-Nov-94 08:49:37 GMT"
        let month = month_of(tokens.get(2)?)?;
        let mut year = i64::from(num(tokens.get(3)?)?);
        if tokens.get(3)?.len() == 2 {
            year += if year < 70 { 2000 } else { 1900 };
        }
        if !tokens.get(7).is_some_and(|z| z.eq_ignore_ascii_case("GMT")) {
            return None;
        }
        (year, month, num(tokens.get(1)?)?, tokens.get(4..7)?)
    };
    let (h, m, sec) = (num(hms[0])?, num(hms[1])?, num(hms[2])?);
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let total = days * 86400 + i64::from(h * 3600 + m * 60 + sec);
    u64::try_from(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(784111777), "1994-11-06T08:49:37Z");
        // 2000-02-29 (a leap day of a century leap year), and the second before 2001.
        assert_eq!(rfc3339(951782400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(978307199), "2000-12-31T23:59:59Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        for days in [-1000i64, 0, 59, 60, 365, 11016, 20000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn http_dates_in_all_three_forms() {
        for s in ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            assert_eq!(parse_http_date(s), Some(784111777), "{s}");
        }
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        for bad in
            ["", "tomorrow", "Sun, 06 Nov 1994 25:00:00 GMT", "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 06 Nov 1994"]
        {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }
}

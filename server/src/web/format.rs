//! Small formatting helpers shared by the pages: UTC dates without a date crate, durations,
//! first lines and URL path segments.

/// Converts a count of days since 1970-01-01 into a proleptic Gregorian (year, month, day).
///
/// Works in 400-year eras of 146 097 days, each starting on a 1st of March so that the leap
/// day falls at the very end of a shifted year.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch from 1970-01-01 to 0000-03-01 (719 468 days earlier).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // 0..=146096
    // Year of the era: remove the leap days of every 4th year, add back the 100th, remove the 400th.
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // 0..=399
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // 0..=365
    // Months counted from March: 153 days per five months (31,30,31,30,31).
    let shifted_month = (5 * day_of_year + 2) / 153; // 0..=11, 0 = March
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32; // 1..=31
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Renders unix seconds as a UTC "YYYY-MM-DD HH:MM:SS".
pub fn format_utc(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let rest = unix_seconds % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// Renders a duration as "12.3 s", "2 min 05 s" or "1 h 02 min 05 s".
pub fn format_duration(ms: u64) -> String {
    let tenths = (ms + 50) / 100;
    if tenths < 600 {
        return format!("{}.{} s", tenths / 10, tenths % 10);
    }
    let secs = (ms + 500) / 1_000;
    if secs < 3_600 {
        format!("{} min {:02} s", secs / 60, secs % 60)
    } else {
        format!(
            "{} h {:02} min {:02} s",
            secs / 3_600,
            secs % 3_600 / 60,
            secs % 60
        )
    }
}

/// The first line of a (commit) message.
pub fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or("")
}

/// Percent-encodes a string for use as one URL path segment (RFC 3986 unreserved bytes kept).
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        // 2000-02-29 is day 11 016; 2000-03-01 follows it.
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(10_957), (2000, 1, 1));
        // 1900 was not a leap year, 2100 will not be.
        assert_eq!(civil_from_days(47_540), (2100, 2, 28));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
    }

    #[test]
    fn utc_times_from_known_unix_seconds() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_utc(951_868_799), "2000-02-29 23:59:59");
        assert_eq!(format_utc(1_796_387_405), "2026-12-04 12:30:05");
        assert_eq!(format_utc(1_234_567_890), "2009-02-13 23:31:30");
        assert_eq!(format_utc(2_147_483_647), "2038-01-19 03:14:07");
        assert_eq!(format_utc(1_709_208_000), "2024-02-29 12:00:00");
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(0), "0.0 s");
        assert_eq!(format_duration(12_345), "12.3 s");
        assert_eq!(format_duration(59_940), "59.9 s");
        assert_eq!(format_duration(59_960), "1 min 00 s");
        assert_eq!(format_duration(125_000), "2 min 05 s");
        assert_eq!(format_duration(3_725_000), "1 h 02 min 05 s");
    }

    #[test]
    fn small_helpers() {
        assert_eq!(first_line("fix: it\n\nlong body"), "fix: it");
        assert_eq!(first_line(""), "");
        assert_eq!(path_segment("my-proj_1.0~x"), "my-proj_1.0~x");
        assert_eq!(path_segment("a b/c\"<"), "a%20b%2Fc%22%3C");
        assert_eq!(path_segment("é"), "%C3%A9");
    }
}

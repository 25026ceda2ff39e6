//! Validation of five-field cron expressions (`minute hour day-of-month
//! month day-of-week`, UTC), plus the `@hourly`-style shorthands.

const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Shorthands accepted in place of five fields.
pub const SHORTHANDS: [&str; 6] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

/// Checks an expression; the error says which field is wrong and why.
pub fn validate(expr: &str) -> Result<(), String> {
    let expr = expr.trim();
    if expr.starts_with('@') {
        return if SHORTHANDS.contains(&expr) {
            Ok(())
        } else {
            Err(format!(
                "unknown shorthand (use one of {})",
                SHORTHANDS.join(", ")
            ))
        };
    }
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!("expected 5 fields, found {}", fields.len()));
    }
    for (i, (field, (what, lo, hi))) in fields.iter().zip(FIELDS).enumerate() {
        let names: &[&str] = match i {
            3 => &MONTHS,
            4 => &DAYS,
            _ => &[],
        };
        let name_base = if i == 3 { 1 } else { 0 };
        for item in field.split(',') {
            check_item(item, lo, hi, names, name_base)
                .map_err(|e| format!("{what} field `{field}`: {e}"))?;
        }
    }
    Ok(())
}

fn check_item(item: &str, lo: u32, hi: u32, names: &[&str], name_base: u32) -> Result<(), String> {
    let (range, step) = match item.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (item, None),
    };
    if let Some(step) = step {
        let n: u32 = step.parse().map_err(|_| format!("bad step `{step}`"))?;
        if n == 0 || n > hi {
            return Err(format!("step {n} is out of range"));
        }
    }
    if range == "*" {
        return Ok(());
    }
    let value = |s: &str| -> Result<u32, String> {
        if let Ok(n) = s.parse::<u32>() {
            return if (lo..=hi).contains(&n) {
                Ok(n)
            } else {
                Err(format!("{n} is outside {lo}-{hi}"))
            };
        }
        let lower = s.to_ascii_lowercase();
        names
            .iter()
            .position(|n| *n == lower)
            .map(|p| p as u32 + name_base)
            .ok_or_else(|| format!("`{s}` is not a number"))
    };
    match range.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(format!("range {a}-{b} is backwards"));
            }
        }
        None => {
            value(range)?;
        }
    }
    Ok(())
}

/// A parsed schedule, to find when it fires (UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    days_of_week: u8,
    /// Day of month and day of week both restricted: either matches
    /// (Vixie cron's rule); one of them `*`: the other decides.
    either_day: bool,
}

/// Days searched back for a tick: eight years cover every schedule that
/// fires at all (29 February on a given weekday recurs within 28 years,
/// but a schedule that needs both is an "either" match, so within 8).
const SEARCH_DAYS: i64 = 8 * 366;

impl Schedule {
    /// Parses an expression the workflow language accepts in `cron`
    /// (five fields or a shorthand); the error says what is wrong.
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        validate(expr)?;
        let expr = match expr.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let set = |i: usize| -> u64 {
            let (_, lo, hi) = FIELDS[i];
            let names: &[&str] = match i {
                3 => &MONTHS,
                4 => &DAYS,
                _ => &[],
            };
            let base = if i == 3 { 1 } else { 0 };
            let value = |s: &str| -> u32 {
                s.parse::<u32>().unwrap_or_else(|_| {
                    let lower = s.to_ascii_lowercase();
                    names
                        .iter()
                        .position(|n| *n == lower)
                        .map_or(lo, |p| p as u32 + base)
                })
            };
            let mut bits = 0u64;
            for item in fields[i].split(',') {
                let (range, step) = match item.split_once('/') {
                    Some((r, st)) => (r, st.parse::<u32>().unwrap_or(1).max(1)),
                    None => (item, 1),
                };
                let (a, b) = if range == "*" {
                    (lo, hi)
                } else if let Some((a, b)) = range.split_once('-') {
                    (value(a), value(b))
                } else if item.contains('/') {
                    (value(range), hi)
                } else {
                    (value(range), value(range))
                };
                let mut v = a;
                while v <= b {
                    bits |= 1 << v;
                    v += step;
                }
            }
            bits
        };
        let mut dow = set(4);
        if dow & (1 << 7) != 0 {
            dow = (dow | 1) & 0x7f;
        }
        Ok(Schedule {
            minutes: set(0),
            hours: set(1) as u32,
            days_of_month: set(2) as u32,
            months: set(3) as u16,
            days_of_week: dow as u8,
            either_day: !fields[2].starts_with('*') && !fields[4].starts_with('*'),
        })
    }

    fn day_matches(&self, days: i64) -> bool {
        let (_, month, day) = civil_from_days(days);
        // 1970-01-01 was a Thursday.
        let weekday = (days + 4).rem_euclid(7) as u32;
        let dom = self.days_of_month & (1 << day) != 0;
        let dow = self.days_of_week & (1 << weekday) != 0;
        let day_ok = if self.either_day {
            dom || dow
        } else {
            dom && dow
        };
        self.months & (1 << month) != 0 && day_ok
    }

    /// The latest tick at or before `minute` (minutes since the Unix
    /// epoch), if it fired in the eight years before.
    pub fn latest_at_or_before(&self, minute: i64) -> Option<i64> {
        let day = minute.div_euclid(1440);
        let in_day = minute.rem_euclid(1440);
        for back in 0..=SEARCH_DAYS {
            let d = day - back;
            if !self.day_matches(d) {
                continue;
            }
            let last = if back == 0 { in_day } else { 1439 };
            for h in (0..=last / 60).rev() {
                if self.hours & (1 << h) == 0 {
                    continue;
                }
                let top = if h == last / 60 { last % 60 } else { 59 };
                if let Some(m) = (0..=top).rev().find(|m| self.minutes & (1u64 << m) != 0) {
                    return Some(d * 1440 + h * 60 + m);
                }
            }
        }
        None
    }
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod schedule_tests {
    use super::Schedule;

    /// Minutes since the epoch of a UTC date and time.
    fn at(y: i64, mo: i64, d: i64, h: i64, mi: i64) -> i64 {
        let y2 = if mo <= 2 { y - 1 } else { y };
        let era = y2.div_euclid(400);
        let yoe = y2 - era * 400;
        let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 1440 + h * 60 + mi
    }

    #[test]
    fn latest_ticks() {
        let now = at(2026, 12, 2, 10, 7); // a Wednesday
        let latest = |e: &str| Schedule::parse(e).expect(e).latest_at_or_before(now);
        assert_eq!(latest("* * * * *"), Some(now));
        assert_eq!(latest("*/15 * * * *"), Some(at(2026, 12, 2, 10, 0)));
        assert_eq!(latest("0 3 * * *"), Some(at(2026, 12, 2, 3, 0)));
        assert_eq!(latest("30 11 * * *"), Some(at(2026, 12, 1, 11, 30)));
        assert_eq!(latest("@hourly"), Some(at(2026, 12, 2, 10, 0)));
        assert_eq!(latest("@weekly"), Some(at(2026, 11, 29, 0, 0)));
        assert_eq!(latest("0 9-17 * * mon-fri"), Some(at(2026, 12, 2, 10, 0)));
        assert_eq!(latest("0 9-17 * * sat,sun"), Some(at(2026, 11, 29, 17, 0)));
        assert_eq!(latest("0 0 1 jan,jul *"), Some(at(2026, 7, 1, 0, 0)));
        assert_eq!(latest("0 0 29 2 *"), Some(at(2024, 2, 29, 0, 0)));
        assert_eq!(latest("0 0 * * 7"), Some(at(2026, 11, 29, 0, 0)));
        assert_eq!(latest("5/20 * * * *"), Some(at(2026, 12, 2, 10, 5)));
        // Either day matches when both are restricted: the 1st, or a Monday.
        assert_eq!(latest("0 0 1 * mon"), Some(at(2026, 12, 1, 0, 0)));
        assert_eq!(latest("0 0 13 * fri"), Some(at(2026, 11, 27, 0, 0)));
        // Never: 31 February.
        assert_eq!(latest("0 0 31 2 *"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_common_schedules() {
        for ok in [
            "* * * * *",
            "0 3 * * *",
            "*/15 * * * *",
            "0 9-17 * * mon-fri",
            "0 0 1 jan,jul *",
            "30 2 * * 0",
            "0 0 * * 7",
            "5,10,15 */2 1-15/3 * *",
            "@daily",
            "@hourly",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_schedules() {
        for bad in [
            "",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
            "@sometimes",
            "1,,2 * * * *",
        ] {
            assert!(validate(bad).is_err(), "{bad:?} accepted");
        }
    }
}

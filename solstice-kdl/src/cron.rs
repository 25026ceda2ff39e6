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

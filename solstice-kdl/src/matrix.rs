//! Matrix expansion and `${{ matrix.NAME }}` interpolation.

use crate::model::Matrix;

/// One combination of a matrix: `(axis, value)` pairs in axis order.
pub type Combination = Vec<(String, String)>;

/// The combinations of a matrix in a stable order (the first axis varies
/// slowest), minus the excluded ones.
pub fn combinations(matrix: &Matrix) -> Vec<Combination> {
    let mut out: Vec<Combination> = vec![Vec::new()];
    for axis in &matrix.axes {
        let mut next = Vec::with_capacity(out.len() * axis.values.len());
        for combo in &out {
            for value in &axis.values {
                let mut c = combo.clone();
                c.push((axis.name.clone(), value.clone()));
                next.push(c);
            }
        }
        out = next;
    }
    out.retain(|combo| {
        !matrix.exclude.iter().any(|ex| {
            ex.iter()
                .all(|(k, v)| combo.iter().any(|(ck, cv)| ck == k && cv == v))
        })
    });
    out
}

/// The id of one expansion: `test (rust=stable, os=illumos)`.
///
/// Distinct combinations always get distinct ids: a value that is empty,
/// has a character of the id's own syntax (`,`, `=`, `(`, `)`, `"`, `\`),
/// a control character or space at either end, is written quoted with
/// escapes (`x="1, y=2"`). Axis names are identifiers and a job's axes are
/// unique, so the id can be read back into the combination.
pub fn expanded_id(base: &str, combo: &[(String, String)]) -> String {
    if combo.is_empty() {
        return base.to_string();
    }
    let parts: Vec<String> = combo
        .iter()
        .map(|(k, v)| format!("{k}={}", id_value(v)))
        .collect();
    format!("{base} ({})", parts.join(", "))
}

/// The job name an expanded id belongs to: `test` for `test (rust=stable)`.
/// (Job names have no spaces; an expansion adds ` (...)`.)
pub fn base_of(expanded: &str) -> &str {
    expanded.split_once(" (").map_or(expanded, |(base, _)| base)
}

fn id_value(value: &str) -> std::borrow::Cow<'_, str> {
    let plain = !value.is_empty()
        && !value.starts_with(char::is_whitespace)
        && !value.ends_with(char::is_whitespace)
        && !value
            .chars()
            .any(|c| matches!(c, ',' | '=' | '(' | ')' | '"' | '\\') || c.is_control());
    if plain {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    std::borrow::Cow::Owned(out)
}

/// The `${{ ... }}` expressions in `text`: `Ok(axis)` for `matrix.axis`,
/// `Err(expression)` for anything else. `$${{` is a literal `${{`.
pub fn references(text: &str) -> Vec<Result<&str, &str>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        let escaped = start > 0 && rest.as_bytes()[start - 1] == b'$';
        let after = &rest[start + 3..];
        let Some(end) = after.find("}}") else { break };
        if !escaped {
            let expr = after[..end].trim();
            match expr.strip_prefix("matrix.") {
                Some(name) if !name.is_empty() => out.push(Ok(name)),
                _ => out.push(Err(expr)),
            }
        }
        rest = &after[end + 2..];
    }
    out
}

/// Replaces `${{ matrix.NAME }}` by the combination's value and `$${{` by `${{`.
pub fn interpolate(text: &str, combo: &[(String, String)]) -> String {
    if !text.contains("${{") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        let escaped = start > 0 && rest.as_bytes()[start - 1] == b'$';
        let after = &rest[start + 3..];
        let Some(end) = after.find("}}") else { break };
        if escaped {
            out.push_str(&rest[..start - 1]);
            out.push_str("${{");
            rest = after;
            continue;
        }
        out.push_str(&rest[..start]);
        let expr = after[..end].trim();
        let value = expr
            .strip_prefix("matrix.")
            .and_then(|name| combo.iter().find(|(k, _)| k == name))
            .map(|(_, v)| v.as_str());
        match value {
            Some(v) => out.push_str(v),
            None => out.push_str(&rest[start..start + 3 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Axis;
    use std::collections::BTreeMap;

    fn pairs(p: &[(&str, &str)]) -> Combination {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn expands_and_excludes() {
        let m = Matrix {
            axes: vec![
                Axis {
                    name: "rust".into(),
                    values: vec!["stable".into(), "beta".into()],
                },
                Axis {
                    name: "os".into(),
                    values: vec!["linux".into(), "illumos".into()],
                },
            ],
            exclude: vec![BTreeMap::from([
                ("rust".into(), "beta".into()),
                ("os".into(), "illumos".into()),
            ])],
        };
        let c = combinations(&m);
        assert_eq!(c.len(), 3);
        assert_eq!(expanded_id("test", &c[1]), "test (rust=stable, os=illumos)");
        assert_eq!(c[2], pairs(&[("rust", "beta"), ("os", "linux")]));
    }

    #[test]
    fn interpolates() {
        let c = pairs(&[("rust", "beta")]);
        assert_eq!(
            interpolate("cargo +${{ matrix.rust }} t", &c),
            "cargo +beta t"
        );
        assert_eq!(
            interpolate("x $${{ matrix.rust }}", &c),
            "x ${{ matrix.rust }}"
        );
        assert_eq!(interpolate("${{ matrix.nope }}", &c), "${{ matrix.nope }}");
        assert_eq!(interpolate("a ${{ unclosed", &c), "a ${{ unclosed");
        assert_eq!(
            references("${{matrix.a}} $${{ b }} ${{ env.X }}"),
            vec![Ok("a"), Err("env.X")]
        );
    }
}

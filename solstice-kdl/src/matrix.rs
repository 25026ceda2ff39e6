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

/// A piece of text that may hold `${{ ... }}` expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    /// Literal text (an escaped `$${{` gives the literal `${{`).
    Text(&'a str),
    /// `${{ expr }}`: the whole of it, and the expression trimmed.
    Expr { raw: &'a str, expr: &'a str },
}

/// The one scanner of `${{ }}`: `$${{` is a literal `${{` (and scanning
/// goes on right after it), `${{` without a closing `}}` is literal text.
/// Validation ([`references`]) and substitution ([`interpolate`]) both read
/// text through it, so they cannot disagree about what is an expression.
fn pieces(text: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        let after = &rest[start + 3..];
        if start > 0 && rest.as_bytes()[start - 1] == b'$' {
            out.push(Piece::Text(&rest[..start - 1]));
            out.push(Piece::Text("${{"));
            rest = after;
            continue;
        }
        let Some(end) = after.find("}}") else { break };
        out.push(Piece::Text(&rest[..start]));
        out.push(Piece::Expr {
            raw: &rest[start..start + 3 + end + 2],
            expr: after[..end].trim(),
        });
        rest = &after[end + 2..];
    }
    out.push(Piece::Text(rest));
    out
}

/// The `${{ ... }}` expressions in `text`: `Ok(axis)` for `matrix.axis`,
/// `Err(expression)` for anything else. `$${{` is a literal `${{`.
pub fn references(text: &str) -> Vec<Result<&str, &str>> {
    pieces(text)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Text(_) => None,
            Piece::Expr { expr, .. } => Some(match expr.strip_prefix("matrix.") {
                Some(name) if !name.is_empty() => Ok(name),
                _ => Err(expr),
            }),
        })
        .collect()
}

/// Replaces `${{ matrix.NAME }}` by the combination's value and `$${{` by `${{`.
pub fn interpolate(text: &str, combo: &[(String, String)]) -> String {
    if !text.contains("${{") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text) {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Expr { raw, expr } => {
                let value = expr
                    .strip_prefix("matrix.")
                    .and_then(|name| combo.iter().find(|(k, _)| k == name))
                    .map(|(_, v)| v.as_str());
                out.push_str(value.unwrap_or(raw));
            }
        }
    }
    out
}

/// How many combinations `matrix` has before `exclude`: the product of its
/// axes' sizes, `None` past `usize`. The one home of the size rule that
/// validation and planning apply ([`crate::MAX_MATRIX_COMBINATIONS`]).
pub fn combination_count(matrix: &Matrix) -> Option<usize> {
    matrix
        .axes
        .iter()
        .try_fold(1usize, |acc, a| acc.checked_mul(a.values.len()))
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
    fn validation_and_substitution_read_the_same_expressions() {
        // After an escaped `$${{`, scanning goes on right after it: the
        // reference behind it is both checked and substituted.
        let text = "$${{ ${{ matrix.rust }} and ${{ matrix.nope }}";
        assert_eq!(references(text), vec![Ok("rust"), Ok("nope")]);
        assert_eq!(
            interpolate(text, &pairs(&[("rust", "beta")])),
            "${{ beta and ${{ matrix.nope }}"
        );
        // An escape without a closing `}}` is still an escape.
        assert_eq!(interpolate("a $${{ b", &[]), "a ${{ b");
        assert!(references("a $${{ b").is_empty());
    }

    #[test]
    fn the_size_rule_counts_what_expansion_makes() {
        let axis = |n: usize| Axis::new("a", (0..n).map(|i| i.to_string()).collect());
        assert_eq!(
            combination_count(&Matrix::new(vec![axis(3), axis(4)])),
            Some(12)
        );
        assert_eq!(
            combination_count(&Matrix::new(vec![axis(0), axis(300)])),
            Some(0),
            "an empty axis makes no combination (validation reports it)"
        );
        let huge = Matrix::new(vec![axis(1 << 16); 5]);
        assert_eq!(combination_count(&huge), None);
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

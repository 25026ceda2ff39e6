//! SQL text: `$n` placeholders, rewritten for SQLite, and the multi-row
//! fragments of the batched statements.

/// Which SQL the database speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// SQL is written with `$1` placeholders; SQLite numbers them `?1`.
    pub(super) fn sql(self, text: &'static str) -> std::borrow::Cow<'static, str> {
        match self {
            Dialect::Postgres => text.into(),
            Dialect::Sqlite => text.replace('$', "?").into(),
        }
    }

    /// [`Dialect::sql`] for SQL built at run time.
    pub(super) fn dialect_sql(self, text: String) -> String {
        match self {
            Dialect::Postgres => text,
            Dialect::Sqlite => text.replace('$', "?"),
        }
    }

    /// [`Dialect::dialect_sql`] for SQL whose parameters appear in order,
    /// each once (`$1 ... $N`): SQLite gets anonymous `?`s. sqlx looks up
    /// the name of every numbered SQLite parameter, and SQLite finds a name
    /// by a linear search, so a multi-row statement with N numbered
    /// parameters costs N² steps to bind; anonymous ones cost N.
    pub(super) fn sequential_sql(self, text: String) -> String {
        if self == Dialect::Postgres {
            return text;
        }
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars().peekable();
        let mut expected = 1u64;
        while let Some(c) = chars.next() {
            if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                let mut n = 0u64;
                while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                    n = n * 10 + u64::from(d);
                    chars.next();
                }
                debug_assert_eq!(n, expected, "parameters out of order in {text}");
                expected += 1;
                out.push('?');
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// Rows per multi-row statement: far below every database's limit on bind
/// parameters (SQLite 32,766, PostgreSQL 65,535).
pub(super) const BATCH_ROWS: usize = 200;

/// Bytes of log data per statement.
pub(super) const BATCH_LOG_BYTES: usize = 4 << 20;

/// `($first, $first+1, ...), (...)`: `rows` tuples of `cols` placeholders.
pub(super) fn placeholders(rows: usize, cols: usize, first: usize) -> String {
    let mut out = String::new();
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!("${}", first + r * cols + c));
        }
        out.push(')');
    }
    out
}

/// `CASE id WHEN $k THEN $k+col ... END` over rows of `width` parameters
/// starting at `first`, where each row's first parameter is the id.
pub(super) fn case_by_id(rows: usize, width: usize, first: usize, col: usize) -> String {
    let mut out = String::from("CASE id");
    for r in 0..rows {
        let base = first + r * width;
        out.push_str(&format!(" WHEN ${base} THEN ${}", base + col));
    }
    out.push_str(" END");
    out
}

/// `$k, $k+width, ...`: the ids of rows of `width` parameters.
pub(super) fn ids_of(rows: usize, width: usize, first: usize) -> String {
    (0..rows)
        .map(|r| format!("${}", first + r * width))
        .collect::<Vec<_>>()
        .join(", ")
}

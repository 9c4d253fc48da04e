//! Markdown tables and the number formats every section shares.

use std::fmt::Write as _;

use crate::results::PgWork;

/// `1.01 transactions; jobs: 1.00 insert, 1.00 update (0.00 HOT)`.
pub(super) fn pg_work(w: &PgWork) -> String {
    // Below what two decimals show (a migration's row, once per api) is left out.
    let shown = |v: f64| v >= 0.005;
    let mut s = format!("{:.2} transactions", w.xacts);
    for t in &w.tables {
        let mut parts = Vec::new();
        if shown(t.inserts) {
            parts.push(format!("{:.2} insert", t.inserts));
        }
        if shown(t.updates) {
            parts.push(format!("{:.2} update ({:.2} HOT)", t.updates, t.hot));
        }
        if shown(t.deletes) {
            parts.push(format!("{:.2} delete", t.deletes));
        }
        if !parts.is_empty() {
            let _ = write!(s, "; {}: {}", t.table, parts.join(", "));
        }
    }
    s
}

/// kB as MiB with one decimal.
pub(super) fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// A ratio with `digits` decimals, or `?` when there was nothing to divide by.
pub(super) fn fixed(v: Option<f64>, digits: usize) -> String {
    v.map_or("?".into(), |v| format!("{v:.digits$}"))
}

/// Rates, rounded: `2446, 2550, 2599`.
pub(super) fn list(rates: &[f64]) -> String {
    let v: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    v.join(", ")
}

/// Milliseconds with two decimals: `7.18, 6.30`.
pub(super) fn list_ms(ms: &[f64]) -> String {
    let v: Vec<String> = ms.iter().map(|r| format!("{r:.2}")).collect();
    v.join(", ")
}

/// Figures with `digits` decimals: `36.1, 41.0`.
pub(super) fn figures(xs: &[f64], digits: usize) -> String {
    let v: Vec<String> = xs.iter().map(|x| format!("{x:.digits$}")).collect();
    v.join(", ")
}

/// A Markdown table of `N` columns.
pub(super) struct Table<const N: usize> {
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    /// A table with this header.
    pub(super) fn new(head: [&str; N]) -> Self {
        Self {
            rows: vec![head.map(String::from)],
        }
    }

    /// Adds a row.
    pub(super) fn row(&mut self, cells: [String; N]) {
        self.rows.push(cells);
    }

    /// The Markdown, one line per row.
    pub(super) fn render(&self) -> String {
        let mut out = String::new();
        for (i, row) in self.rows.iter().enumerate() {
            let _ = writeln!(out, "| {} |", row.join(" | "));
            if i == 0 {
                let _ = writeln!(out, "|{}", " --- |".repeat(N));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::TableWork;

    #[test]
    fn a_table_has_its_separator_after_the_header() {
        let mut t = Table::new(["a", "b"]);
        t.row(["1".into(), String::new()]);
        assert_eq!(t.render(), "| a | b |\n| --- | --- |\n| 1 |  |\n");
    }

    #[test]
    fn row_work_leaves_out_what_rounds_to_nothing() {
        let w = PgWork {
            xacts: 0.51,
            tables: vec![
                TableWork {
                    table: "_sqlx_migrations".into(),
                    inserts: 0.0002,
                    ..TableWork::default()
                },
                TableWork {
                    table: "outbox".into(),
                    inserts: 1.0,
                    deletes: 1.0,
                    ..TableWork::default()
                },
            ],
        };
        assert_eq!(
            pg_work(&w),
            "0.51 transactions; outbox: 1.00 insert, 1.00 delete"
        );
        assert_eq!(fixed(None, 2), "?");
        assert_eq!(mib(23_552), "23.0");
    }
}

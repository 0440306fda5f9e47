//! Printing results as kubectl does: aligned columns, or one JSON or YAML document.

use serde::Serialize;

use crate::cli::Format;

/// Something printable as a table row.
pub trait Tabular: Serialize {
    /// Column headers.
    fn headers() -> &'static [&'static str];
    /// This row's cells.
    fn cells(&self) -> Vec<String>;
}

/// Renders `rows` in `format`; an empty table says so instead of printing nothing.
pub fn render<T: Tabular>(rows: &[T], format: Format, empty: &str) -> String {
    match format {
        Format::Json => json(&serde_json::json!({"items": rows})),
        Format::Yaml => yaml(&serde_json::json!({"items": rows})),
        Format::Table if rows.is_empty() => format!("{empty}\n"),
        Format::Table => table(T::headers(), rows.iter().map(Tabular::cells).collect()),
    }
}

/// One JSON document, pretty-printed.
pub fn json(value: &impl Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// One YAML document.
pub fn yaml(value: &impl Serialize) -> String {
    serde_yaml::to_string(value).unwrap_or_default()
}

/// Columns separated by three spaces, as kubectl aligns them; the last is not padded.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            out.push_str(cell);
            if i < last {
                out.push_str(&" ".repeat(width - cell.chars().count() + 3));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// `5m ago`, `2h ago`, as kubectl shows ages.
pub fn age(at: chrono::DateTime<chrono::Utc>, now: chrono::DateTime<chrono::Utc>) -> String {
    let seconds = (now - at).num_seconds().max(0);
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7200 => format!("{}m", seconds / 60),
        7200..172_800 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_the_last_is_not_padded() {
        let text = table(
            &["A", "LONGER", "C"],
            vec![vec!["xyz".into(), "1".into(), "end".into()]],
        );
        assert_eq!(text, "A     LONGER   C\nxyz   1        end\n");
    }

    #[test]
    fn ages_read_like_kubectls() {
        let now = chrono::Utc::now();
        assert_eq!(age(now - chrono::Duration::seconds(30), now), "30s");
        assert_eq!(age(now - chrono::Duration::minutes(5), now), "5m");
        assert_eq!(age(now - chrono::Duration::hours(3), now), "3h");
        assert_eq!(age(now - chrono::Duration::days(3), now), "3d");
    }
}

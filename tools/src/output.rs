//! How the operator commands print: aligned tables and `name  value` lines for people, one JSON
//! object for scripts (`--json`), and a failure as one line on stderr.

use std::fmt::Write as _;
use std::future::Future;

use anyhow::{Context, anyhow};
use serde::Serialize;

/// Column alignment in a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Padded on the right: words and hex.
    Left,
    /// Padded on the left: numbers, so digits line up.
    Right,
}

/// Rows under a header, columns padded to their widest cell; numbers right-aligned so digits
/// line up. Cells are ASCII (hex, decimals, words), so byte length is display width.
pub fn table(header: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|(name, _)| name.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = header.iter().map(|(name, _)| name.to_string()).collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            let width = widths[column];
            let align = header[column].1;
            if column > 0 {
                line.push_str("  ");
            }
            match align {
                Align::Left => {
                    let _ = write!(line, "{cell:<width$}");
                }
                Align::Right => {
                    let _ = write!(line, "{cell:>width$}");
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `name  value` lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let rows: Vec<Vec<String>> = pairs
        .iter()
        .map(|(name, value)| vec![name.to_string(), value.clone()])
        .collect();
    // The header row of a two-column field list is noise: drop it.
    let rendered = table(&[("", Align::Left), ("", Align::Left)], &rows);
    rendered
        .split_once('\n')
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or_default()
}

/// The error chain on one line, each cause once: alloy's errors repeat their source in their own
/// message, which `{:#}` would print twice.
pub fn one_line(error: &anyhow::Error) -> anyhow::Error {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    anyhow!(line)
}

/// Runs a command's async `execute` from a synchronous `main` and prints its answer: one JSON
/// object with `--json`, else `render`'s text. A failure comes back as [`one_line`].
pub fn print_answer<T: Serialize>(
    execute: impl Future<Output = anyhow::Result<T>>,
    json: bool,
    render: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let output = runtime
        .block_on(execute)
        .map_err(|error| one_line(&error))?;
    if json {
        println!("{}", serde_json::to_string(&output)?);
    } else {
        print!("{}", render(&output));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_right_align_numbers() {
        let rendered = table(
            &[("NAME", Align::Left), ("AMOUNT", Align::Right)],
            &[
                vec!["a".into(), "5".into()],
                vec!["longer".into(), "12345678".into()],
            ],
        );
        assert_eq!(
            rendered,
            "NAME      AMOUNT\n\
             a              5\n\
             longer  12345678\n"
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("rpc: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn one_line_names_each_cause_once() {
        let error = anyhow::Error::new(Repeats(std::io::Error::other("connection refused")))
            .context("deploying on chain 1");
        assert_eq!(
            one_line(&error).to_string(),
            "deploying on chain 1: rpc: connection refused"
        );
        let error = anyhow::Error::new(std::io::Error::other("inner")).context("outer");
        assert_eq!(one_line(&error).to_string(), "outer: inner");
    }
}

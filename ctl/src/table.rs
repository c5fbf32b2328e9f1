//! Aligned text tables for human output. Every cell is escaped: a control
//! character (a line break, an escape sequence) in a label, a name or a
//! message shows as `\r`, `\u{1b}`…, so nothing a node or a workload
//! reports can forge rows or move the terminal's cursor.

/// A cell as it may be printed: control characters escaped.
pub fn clean(cell: &str) -> String {
    if !cell.chars().any(char::is_control) {
        return cell.to_string();
    }
    let mut out = String::with_capacity(cell.len() + 8);
    for c in cell.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Renders rows under a header, each column as wide as its widest cell.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| clean(c)).collect()).collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `-` for a missing value.
pub fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_so_rows_cannot_be_forged() {
        let t = render(&["NAME", "LABELS"], &[vec!["node-1".into(), "x=a\r\nnode-9  ready\u{1b}[2J".into()]]);
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(t.contains("x=a\\r\\nnode-9  ready\\u{1b}[2J"), "{t}");
        assert_eq!(clean("plain é"), "plain é");
    }

    #[test]
    fn columns_align() {
        let t = render(&["A", "LONGER"], &[vec!["xxxx".into(), "1".into()], vec!["y".into(), "22".into()]]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "A     LONGER");
        assert_eq!(lines[1], "xxxx  1");
        assert_eq!(lines[2], "y     22");
    }
}

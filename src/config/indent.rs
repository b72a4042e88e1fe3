//! The real line of a YAML indentation mistake. The parser notices a mis-indented key only where the structure
//! breaks, and its position then names the key before it (a line indented one space too far reads as the rest of
//! the previous value); a tab is reported at the value before the tab. This looks at the lines up to the
//! parser's position for the line whose indentation fits no open block, and says which line and by how much.

use super::locate::{PathIndex, Position, join};

/// An indentation mistake: where, the key path the key there would have, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Misindented {
    /// The first character of the line at fault (or the tab).
    pub(super) at: Position,
    /// The path of the key on that line, as the block around it would give it; empty when unknown.
    pub(super) path: String,
    /// What is wrong and what would be right.
    pub(super) message: String,
}

/// One line of content (not blank, not only a comment).
struct Line<'a> {
    number: usize,
    indent: usize,
    /// Column of the `-` of a sequence item, if the line starts one.
    dash: Option<usize>,
    /// Column where the line's key (or value) starts, after any `- `.
    start: usize,
    /// The key written on the line, if it has one.
    key: Option<&'a str>,
}

fn content_line(number: usize, text: &str) -> Option<Line<'_>> {
    let body = text.trim_start_matches(' ');
    if body.is_empty() || body.starts_with('#') || body.starts_with("---") {
        return None;
    }
    let indent = text.len() - body.len();
    let (dash, rest, start) = match body.strip_prefix('-').filter(|r| r.is_empty() || r.starts_with(' ')) {
        Some(rest) => {
            let after = rest.trim_start_matches(' ');
            (Some(indent), after, indent + 1 + (rest.len() - after.len()))
        }
        None => (None, body, indent),
    };
    let key = rest.split_once(':').map(|(k, _)| k.trim()).filter(|k| {
        !k.is_empty() && !k.starts_with(['"', '\'', '{', '[', '#']) && !k.contains(' ') && {
            // `key:` at the end of the line or `key: value`, not a URL's `http://`.
            let after = rest.get(k.len() + 1..).unwrap_or_default();
            after.is_empty() || after.starts_with(' ')
        }
    });
    Some(Line { number, indent, dash, start, key })
}

/// The mis-indented line at or before `error_line` (1-based; the line after it too, for a tab), if one is found.
pub(super) fn find(text: &str, error_line: u64, index: &PathIndex) -> Option<Misindented> {
    let last = usize::try_from(error_line).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    // Tabs first: YAML forbids them in indentation, and the parser blames the line before.
    for (i, line) in lines.iter().enumerate().take(last + 1) {
        let lead: String = line.chars().take_while(|c| *c == ' ' || *c == '\t').collect();
        if let Some(tab) = lead.find('\t') {
            let at = Position { line: i as u64 + 1, column: tab as u64 + 1 };
            // The parser stopped before this line: its key's block is the one of the content line before it.
            let previous = (1..=i).rev().find(|&n| lines.get(n - 1).is_some_and(|l| content_line(n, l).is_some()));
            let path = content_line(i + 1, &line.replace('\t', " "))
                .and_then(|l| l.key)
                .zip(previous)
                .map(|(k, p)| sibling_path(&lines, p, k, index))
                .unwrap_or_default();
            return Some(Misindented {
                at,
                path,
                message: "a tab in the indentation: YAML indents with spaces only".to_owned(),
            });
        }
    }
    let line = content_line(last, lines.get(last.checked_sub(1)?)?)?;
    let before: Vec<Line<'_>> =
        lines.iter().enumerate().take(last - 1).filter_map(|(i, l)| content_line(i + 1, l)).collect();
    let previous = before.last()?;
    // The blocks open at this point: the previous line's, and each less indented one before it.
    let mut keys = Vec::new();
    let mut dashes = Vec::new();
    let mut limit = usize::MAX;
    for l in before.iter().rev() {
        if l.start < limit {
            keys.push(l.start);
            limit = l.start;
        }
        if let Some(d) = l.dash.filter(|&d| d < limit) {
            dashes.push(d);
            limit = d;
        }
    }
    let opens_block =
        previous.key.is_some() && lines.get(previous.number - 1).is_some_and(|l| l.trim_end().ends_with(':'));
    let fits = match line.dash {
        Some(d) => dashes.contains(&d) || (opens_block && d >= previous.start),
        None => keys.contains(&line.indent) || (opens_block && line.indent > previous.start),
    };
    if fits {
        return None;
    }
    let what = line.key.map_or_else(|| "this line".to_owned(), |k| format!("`{k}:`"));
    let reference = previous
        .key
        .map_or_else(|| format!("line {}", previous.number), |k| format!("`{k}:` on line {}", previous.number));
    let message = if dashes.contains(&line.indent) {
        format!(
            "{what} is indented like a list item (`- `) but is none; the keys before it ({reference}) are indented \
             by {}: keys of one block line up",
            previous.start
        )
    } else {
        format!(
            "{what} is indented by {} spaces, the keys before it ({reference}) by {}: YAML nests by indentation, so \
             keys of one block line up",
            line.indent, previous.start
        )
    };
    let path = line.key.map(|k| sibling_path(&lines, previous.number, k, index)).unwrap_or_default();
    Some(Misindented { at: Position { line: last as u64, column: line.indent as u64 + 1 }, path, message })
}

/// The path `key` has beside the key written on line `number` (the block the user most likely meant).
fn sibling_path(lines: &[&str], number: usize, key: &str, index: &PathIndex) -> String {
    let Some(line) = lines.get(number.saturating_sub(1)).and_then(|l| content_line(number, l)) else {
        return String::new();
    };
    let at = Position { line: number as u64, column: line.start as u64 + 1 };
    let path = index.path_at(at);
    // The path of the key on that line, less its last key, is the block; a line with no key gives no guess.
    if line.key.is_none() || path.is_empty() {
        return String::new();
    }
    let parent = path.rsplit_once('.').map_or("", |(parent, _)| parent);
    join(parent, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str, error_line: u64) -> Option<Misindented> {
        find(text, error_line, &PathIndex::build(text))
    }

    #[test]
    fn a_key_indented_one_space_too_far_is_named_at_its_own_line() {
        let text = "devices:\n  - name: house\n    protocol: daly\n     serial: /dev/ttyUSB0\n    baud: 9600\n";
        let m = found(text, 4).unwrap();
        assert_eq!(m.at, Position { line: 4, column: 6 });
        assert_eq!(m.path, "devices[0].serial");
        assert_eq!(
            m.message,
            "`serial:` is indented by 5 spaces, the keys before it (`protocol:` on line 3) by 4: YAML nests by \
             indentation, so keys of one block line up"
        );
    }

    #[test]
    fn a_key_indented_too_little_is_named_too() {
        let text = "devices:\n  - name: house\n   protocol: daly\n    serial: /dev/ttyUSB0\n";
        let m = found(text, 3).unwrap();
        assert_eq!((m.at, m.path.as_str()), (Position { line: 3, column: 4 }, "devices[0].protocol"));
        let text = "devices:\n  - name: house\n    protocol: daly\n  serial: /dev/ttyUSB0\n";
        let m = found(text, 4).unwrap();
        assert_eq!(m.at, Position { line: 4, column: 3 });
        assert!(m.message.starts_with("`serial:` is indented like a list item"), "{}", m.message);
    }

    #[test]
    fn a_tab_is_found_on_its_own_line_and_well_indented_lines_are_left_alone() {
        let text = "devices:\n  - name: house\n    protocol: daly\n    tcp: 1.2.3.4:5\n\tbaud: 9600\n";
        let m = found(text, 4).unwrap();
        assert_eq!(m.at, Position { line: 5, column: 1 });
        assert!(m.message.contains("tab"), "{}", m.message);
        assert_eq!(m.path, "devices[0].baud");
        let good = "devices:\n  - name: house\n    daly:\n      address: 1\n  - name: b\n";
        for line in 1..=5 {
            assert_eq!(found(good, line), None, "line {line}");
        }
    }
}

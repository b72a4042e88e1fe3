//! Where things are in the YAML text: a key path for every node, from one walk over the parser's events.
//!
//! serde-saphyr reports a line and column with each error but not the key path, and `Spanned` values point at a
//! value rather than at its key (for `mqtt:` followed by an indented block, the value starts a line later). This
//! index fills both gaps: it maps a position to the path of the node there, and a path to where its key is. It
//! does not expand aliases (an alias is one node at its own position), so its cost is linear in the text, which
//! is already size-limited before it gets here.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

/// A 1-based line and column, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Position {
    /// Line, from 1.
    pub(crate) line: u64,
    /// Column, from 1.
    pub(crate) column: u64,
}

/// One open collection during the walk.
#[derive(Debug)]
enum Frame {
    /// A mapping: its path, and the key whose value comes next (None while a key is expected).
    Mapping { path: String, key: Option<String> },
    /// A sequence: its path and the index of the next item.
    Sequence { path: String, next: usize },
    /// A collection used as a mapping key (legal YAML, never meaningful in our config): skipped over.
    ComplexKey,
}

/// Positions of keys and nodes by key path, and paths by position.
#[derive(Debug, Default)]
pub(crate) struct PathIndex {
    /// Every key and value node start, in document order, with the path it belongs to.
    nodes: Vec<(Position, String)>,
    /// Where the key of each path is written.
    keys: HashMap<String, Position>,
}

/// Deeper than this the walk stops: the deserializer's budget refuses such files anyway.
const MAX_DEPTH: usize = 128;

impl PathIndex {
    /// Walks `text` as far as it parses; a syntax error simply ends the walk, so positions before it are known.
    pub(crate) fn build(text: &str) -> Self {
        let mut index = Self::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        while let Some(Ok((event, span))) = parser.next_event() {
            let at = Position { line: span.start.line() as u64, column: span.start.col() as u64 + 1 };
            match event {
                Event::Scalar(value, ..) => index.node(&mut stack, at, Some(&value), None),
                Event::Alias(_) => index.node(&mut stack, at, None, None),
                Event::MappingStart(..) => {
                    let frame = |path| Frame::Mapping { path, key: None };
                    index.node(&mut stack, at, None, Some(&frame));
                }
                Event::SequenceStart(..) => {
                    let frame = |path| Frame::Sequence { path, next: 0 };
                    index.node(&mut stack, at, None, Some(&frame));
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    if let Some(Frame::ComplexKey) = stack.pop() {
                        // The complex key is done; its value follows under a placeholder name.
                        if let Some(Frame::Mapping { key, .. }) = stack.last_mut() {
                            *key = Some("?".to_owned());
                        }
                    }
                }
                _ => {}
            }
            if stack.len() > MAX_DEPTH {
                break;
            }
        }
        index
    }

    /// Records a node starting `at`; `scalar` is its text if it is a scalar, `open` makes the frame it opens.
    fn node(
        &mut self,
        stack: &mut Vec<Frame>,
        at: Position,
        scalar: Option<&str>,
        open: Option<&dyn Fn(String) -> Frame>,
    ) {
        let path = match stack.last_mut() {
            None => String::new(),
            Some(Frame::ComplexKey) => {
                if open.is_some() {
                    stack.push(Frame::ComplexKey);
                }
                return;
            }
            Some(Frame::Sequence { path, next }) => {
                let item = format!("{path}[{next}]");
                *next += 1;
                item
            }
            Some(Frame::Mapping { path, key }) => {
                if let Some(key) = key.take() {
                    join(path, &key)
                } else {
                    // This node is a key.
                    if let Some(name) = scalar {
                        let full = join(path, name);
                        self.keys.entry(full.clone()).or_insert(at);
                        self.nodes.push((at, full));
                        *key = Some(name.to_owned());
                    } else if open.is_some() {
                        stack.push(Frame::ComplexKey);
                    } else {
                        *key = Some("?".to_owned());
                    }
                    return;
                }
            }
        };
        self.nodes.push((at, path.clone()));
        if let Some(open) = open {
            stack.push(open(path));
        }
    }

    /// The path of the last node that starts at or before `at` (the node an error at `at` is about).
    pub(crate) fn path_at(&self, at: Position) -> String {
        let count = self.nodes.partition_point(|(start, _)| *start <= at);
        count.checked_sub(1).and_then(|i| self.nodes.get(i)).map(|(_, path)| path.clone()).unwrap_or_default()
    }

    /// Where the key of `path` is written, if it is written literally (not merged in or aliased).
    pub(crate) fn key(&self, path: &str) -> Option<Position> {
        self.keys.get(path).copied()
    }
}

/// `parent.key`, or `key` at the top.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: u64, column: u64) -> Position {
        Position { line, column }
    }

    const TEXT: &str = "\
defaults:
  timeout: 1s
devices:
  - name: house
    daly: { address: [1, 2] }
  - name: rack
mqtt:
  host: x
";

    #[test]
    fn keys_are_found_by_path_where_they_are_written() {
        let index = PathIndex::build(TEXT);
        assert_eq!(index.key("defaults.timeout"), Some(at(2, 3)));
        assert_eq!(index.key("devices[1].name"), Some(at(6, 5)));
        assert_eq!(index.key("devices[0].daly.address"), Some(at(5, 13)));
        assert_eq!(index.key("mqtt"), Some(at(7, 1)));
        assert_eq!(index.key("devices[2].name"), None);
    }

    #[test]
    fn a_position_names_the_path_of_the_node_there_or_just_before() {
        let index = PathIndex::build(TEXT);
        assert_eq!(index.path_at(at(2, 12)), "defaults.timeout");
        assert_eq!(index.path_at(at(5, 28)), "devices[0].daly.address[1]");
        assert_eq!(index.path_at(at(6, 5)), "devices[1].name");
        assert_eq!(index.path_at(at(8, 9)), "mqtt.host");
        assert_eq!(index.path_at(at(1, 1)), "defaults");
    }

    #[test]
    fn a_syntax_error_ends_the_walk_but_keeps_what_came_before() {
        let index = PathIndex::build("devices:\n  - name: \"abc\n");
        assert_eq!(index.path_at(at(2, 11)), "devices[0].name");
    }

    #[test]
    fn complex_keys_and_aliases_do_not_derail_the_paths() {
        let index = PathIndex::build("? [a, b]\n: 1\nx: &a 2\ny: *a\n");
        assert_eq!(index.key("x"), Some(at(3, 1)));
        assert_eq!(index.path_at(at(4, 4)), "y");
    }
}

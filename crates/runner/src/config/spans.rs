//! Where every key of a config file was written: the file parsed once by
//! toml's own parser (toml_edit, which keeps positions), every key path
//! (`model.nodes[1].units`, dotted keys and inline tables included) mapped
//! to the 1-based line and column of its key.

use std::collections::HashMap;

use mtrec_core::protocol::{KeyPath, KeySegment};
use toml_edit::{ImDocument, Item, Value};

/// 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Positions of a config text's keys and array-of-tables entries.
#[derive(Clone, Debug, Default)]
pub struct Spans {
    at: HashMap<Vec<KeySegment>, Position>,
}

impl Spans {
    /// Indexes `text`; a text that does not parse gives no positions (its
    /// syntax error is reported by the typed parse, with toml's own place).
    pub fn of(text: &str) -> Self {
        let mut spans = Spans::default();
        if let Ok(doc) = ImDocument::parse(text) {
            let lines = LineIndex::new(text);
            spans.walk_item(doc.as_item(), &mut Vec::new(), &lines);
        }
        spans
    }

    /// The position of `path`, or of its nearest written ancestor (a key
    /// the file leaves to its default has none of its own).
    pub fn find(&self, path: &KeyPath) -> Option<(Position, usize)> {
        (1..=path.0.len())
            .rev()
            .find_map(|n| self.at.get(&path.0[..n]).map(|p| (*p, n)))
    }

    /// The position of exactly `path`.
    pub fn get(&self, path: &KeyPath) -> Option<Position> {
        self.at.get(&path.0).copied()
    }

    fn put(&mut self, path: &[KeySegment], span: Option<std::ops::Range<usize>>, lines: &LineIndex) {
        if let Some(span) = span {
            self.at
                .entry(path.to_vec())
                .or_insert_with(|| lines.position(span.start));
        }
    }

    fn walk_item(&mut self, item: &Item, path: &mut Vec<KeySegment>, lines: &LineIndex) {
        match item {
            Item::Table(t) => self.walk_table(t, path, lines),
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    path.push(KeySegment::Index(i));
                    self.walk_table(t, path, lines);
                    path.pop();
                }
            }
            Item::Value(v) => self.walk_value(v, path, lines),
            Item::None => {}
        }
    }

    /// A `[table]` (or one `[[array]]` entry): its header, then each key.
    fn walk_table(&mut self, t: &toml_edit::Table, path: &mut Vec<KeySegment>, lines: &LineIndex) {
        self.put(path, t.span(), lines);
        for (k, v) in t.iter() {
            path.push(KeySegment::Key(k.to_string()));
            self.put(path, t.key(k).and_then(|key| key.span()), lines);
            self.walk_item(v, path, lines);
            path.pop();
        }
    }

    fn walk_value(&mut self, value: &Value, path: &mut Vec<KeySegment>, lines: &LineIndex) {
        self.put(path, value.span(), lines);
        match value {
            Value::InlineTable(t) => {
                for (k, v) in t.iter() {
                    path.push(KeySegment::Key(k.to_string()));
                    self.put(path, t.key(k).and_then(|key| key.span()), lines);
                    self.walk_value(v, path, lines);
                    path.pop();
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    path.push(KeySegment::Index(i));
                    self.walk_value(v, path, lines);
                    path.pop();
                }
            }
            _ => {}
        }
    }
}

/// Byte offset -> line and column.
struct LineIndex {
    starts: Vec<usize>,
    text_len: usize,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            starts,
            text_len: text.len(),
        }
    }
    fn position(&self, offset: usize) -> Position {
        let offset = offset.min(self.text_len);
        let line = self.starts.partition_point(|&s| s <= offset);
        Position {
            line,
            column: offset - self.starts[line - 1] + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(keys: &[&str]) -> KeyPath {
        KeyPath(
            keys.iter()
                .map(|k| match k.parse::<usize>() {
                    Ok(i) => KeySegment::Index(i),
                    Err(_) => KeySegment::Key(k.to_string()),
                })
                .collect(),
        )
    }

    #[test]
    fn keys_of_every_form_have_their_line() {
        let text = "[model]\narch = \"mmoe\"\ntower.units = [8, 9]\ngate = { bias = true }\n\n[[model.nodes]]\nid = \"a\"\n[[model.nodes]]\nid = \"b\"\nunits = [1]\n";
        let s = Spans::of(text);
        assert_eq!(s.get(&path(&["model", "arch"])).map(|p| p.line), Some(2));
        assert_eq!(s.get(&path(&["model", "tower", "units"])).map(|p| p.line), Some(3));
        assert_eq!(
            s.get(&path(&["model", "tower", "units", "1"])),
            Some(Position { line: 3, column: 19 })
        );
        assert_eq!(s.get(&path(&["model", "gate", "bias"])).map(|p| p.line), Some(4));
        assert_eq!(s.get(&path(&["model", "nodes", "1"])).map(|p| p.line), Some(8));
        assert_eq!(
            s.get(&path(&["model", "nodes", "1", "units"])).map(|p| p.line),
            Some(10)
        );
        // An unwritten key falls back to its nearest written ancestor.
        let (p, depth) = s.find(&path(&["model", "nodes", "0", "units"])).unwrap();
        assert_eq!((p.line, depth), (6, 3));
    }
}

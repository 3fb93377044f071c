//! Maps field paths (`spec.services[1].endpoints[0].path`) to line and column in the YAML
//! source, so every diagnostic — from serde or from semantic validation — can point at
//! the text the user wrote.
//!
//! serde_yaml's values carry no positions, so the source is read a second time with
//! yaml-rust2's event parser. The walk keeps its own stack instead of recursing, so no
//! input can exhaust the thread's stack.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, starting at 1.
    pub line: usize,
    /// Column, starting at 1.
    pub column: usize,
}

/// The positions of every node of one YAML document, by field path.
#[derive(Debug, Clone, Default)]
pub struct Locator {
    positions: HashMap<String, Position>,
}

impl Locator {
    /// The position of `path`, or of its closest ancestor that exists in the source
    /// (a missing field is reported where its parent object starts).
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            if p.is_empty() {
                return None;
            }
            p = parent(p);
        }
    }

    /// Number of nodes indexed (for tests).
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// True when nothing was indexed.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

fn parent(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

enum Frame {
    Map {
        path: String,
        /// The key just read, waiting for its value.
        key: Option<String>,
        /// Whether any key was read yet: a block mapping's start event is marked after
        /// its first key, so the mapping is placed at that key instead.
        seen_key: bool,
        /// This container is itself a (complex) mapping key.
        as_key: bool,
    },
    Seq {
        path: String,
        next: usize,
        as_key: bool,
    },
}

impl Frame {
    fn as_key(&self) -> bool {
        match self {
            Frame::Map { as_key, .. } | Frame::Seq { as_key, .. } => *as_key,
        }
    }
}

/// Indexes every document of `source`. Returns one locator per document, in order; on a
/// syntax error, the documents read so far.
pub fn index_documents(source: &str) -> Vec<Locator> {
    let mut docs = Vec::new();
    let mut parser = Parser::new_from_str(source);
    let mut stack: Vec<Frame> = Vec::new();
    let mut current = Locator::default();
    let mut started = false;
    while let Ok((event, mark)) = parser.next_token() {
        let pos = Position {
            line: mark.line(),
            column: mark.col() + 1,
        };
        match event {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                started = true;
                stack.clear();
                current = Locator::default();
            }
            Event::DocumentEnd => {
                if started {
                    docs.push(std::mem::take(&mut current));
                }
                started = false;
            }
            Event::Scalar(value, ..) => {
                // A scalar in key position names the next value; elsewhere it is a value.
                if let Some(Frame::Map {
                    path,
                    key,
                    seen_key,
                    ..
                }) = stack.last_mut()
                    && key.is_none()
                {
                    if !*seen_key {
                        *seen_key = true;
                        current.positions.entry(path.clone()).or_insert(pos);
                    }
                    let child = join_key(path, &value);
                    current.positions.entry(child).or_insert(pos);
                    *key = Some(value);
                    continue;
                }
                if let Some(path) = value_path(&mut stack) {
                    current.positions.entry(path).or_insert(pos);
                }
            }
            Event::Alias(_) => {
                if let Some(path) = value_path(&mut stack) {
                    current.positions.entry(path).or_insert(pos);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let as_key = matches!(stack.last(), Some(Frame::Map { key: None, .. }));
                let path = if stack.is_empty() {
                    Some(String::new())
                } else if as_key {
                    // A complex (non-scalar) key: nothing below it is addressable.
                    None
                } else {
                    value_path(&mut stack)
                };
                let path = path.unwrap_or_else(|| "\u{0}".to_string());
                if matches!(event, Event::MappingStart(..)) {
                    stack.push(Frame::Map {
                        path,
                        key: None,
                        seen_key: false,
                        as_key,
                    });
                } else {
                    current.positions.entry(path.clone()).or_insert(pos);
                    stack.push(Frame::Seq {
                        path,
                        next: 0,
                        as_key,
                    });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let was_key = stack.pop().is_some_and(|f| f.as_key());
                if was_key && let Some(Frame::Map { key, .. }) = stack.last_mut() {
                    *key = Some("\u{0}".to_string());
                }
            }
            Event::StreamStart | Event::Nothing => {}
        }
    }
    docs
}

/// The path of the value being started in the innermost container, advancing that
/// container past it.
fn value_path(stack: &mut [Frame]) -> Option<String> {
    match stack.last_mut()? {
        Frame::Map { path, key, .. } => {
            let k = key.take()?;
            Some(join_key(path, &k))
        }
        Frame::Seq { path, next, .. } => {
            let p = format!("{path}[{next}]");
            *next += 1;
            Some(p)
        }
    }
}

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_fields() {
        let src = "apiVersion: v1\nkind: X\nspec:\n  services:\n  - name: a\n    endpoints:\n    - path: /\n  - name: b\n";
        let docs = index_documents(src);
        assert_eq!(docs.len(), 1);
        let l = &docs[0];
        assert_eq!(l.find("kind"), Some(Position { line: 2, column: 1 }));
        assert_eq!(
            l.find("spec.services[0].endpoints[0].path"),
            Some(Position { line: 7, column: 7 })
        );
        assert_eq!(
            l.find("spec.services[1].name"),
            Some(Position { line: 8, column: 5 })
        );
        // Missing fields fall back to the closest ancestor.
        assert_eq!(
            l.find("spec.services[1].replicas"),
            l.find("spec.services[1]")
        );
    }

    #[test]
    fn indexes_each_document() {
        let docs = index_documents("a: 1\n---\nb: 2\n---\n");
        assert!(docs.len() >= 2);
        assert_eq!(docs[1].find("b"), Some(Position { line: 3, column: 1 }));
    }

    #[test]
    fn survives_junk() {
        for src in ["{", "[[[[", "a: b: c", "\u{0}\u{1}", "? [a]\n: b\n", "*x"] {
            let _ = index_documents(src);
        }
        let deep = "[".repeat(100_000);
        let _ = index_documents(&deep);
    }
}

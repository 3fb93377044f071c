//! Diagnostics: one precise message per problem, naming the file, the document, the field
//! path, the bad value and what was expected.

use std::fmt;

use crate::locate::Position;

/// One problem found in an input file.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// The file as the user named it.
    pub file: String,
    /// 1-based index of the YAML document in the file, when the problem is inside one.
    pub document: Option<usize>,
    /// `Kind/name` of the object, when known.
    pub object: Option<String>,
    /// Field path inside the document, e.g. `spec.services[1].endpoints[0].calls[0].service`.
    pub path: String,
    /// Where the field (or its closest existing ancestor) is in the source.
    pub position: Option<Position>,
    /// What is wrong: the value and what was expected.
    pub message: String,
    /// A suggestion, when one helps.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A problem with the file as a whole (unreadable, empty, not YAML).
    pub fn file(file: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            document: None,
            object: None,
            path: String::new(),
            position: None,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(p) = self.position {
            write!(f, ":{}:{}", p.line, p.column)?;
        }
        write!(f, ": error:")?;
        match (&self.object, self.document) {
            (Some(o), Some(d)) => write!(f, " {o} (document {d})")?,
            (None, Some(d)) => write!(f, " document {d}")?,
            (Some(o), None) => write!(f, " {o}")?,
            (None, None) => {}
        }
        if !self.path.is_empty() {
            write!(f, " {}", self.path)?;
        }
        if self.document.is_some() || self.object.is_some() || !self.path.is_empty() {
            write!(f, ":")?;
        }
        write!(f, " {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// The closest candidate to `input` by edit distance, if close enough to be a likely typo.
pub fn suggest<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(input, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_all_parts() {
        let d = Diagnostic {
            file: "mesh.yaml".into(),
            document: Some(2),
            object: Some("ServiceMesh/shop".into()),
            path: "spec.services[1].name".into(),
            position: Some(Position { line: 9, column: 7 }),
            message: "\"Front\" is not a DNS-1123 label; expected lower case".into(),
            hint: Some("use \"front\"".into()),
        };
        assert_eq!(
            d.to_string(),
            "mesh.yaml:9:7: error: ServiceMesh/shop (document 2) spec.services[1].name: \"Front\" is not a DNS-1123 label; expected lower case\n  hint: use \"front\""
        );
        assert_eq!(
            Diagnostic::file("x.yaml", "contains no YAML documents").to_string(),
            "x.yaml: error: contains no YAML documents"
        );
    }

    #[test]
    fn suggests_close_names() {
        assert_eq!(suggest("bakend", ["frontend", "backend"]), Some("backend"));
        assert_eq!(suggest("zzz", ["frontend", "backend"]), None);
    }
}

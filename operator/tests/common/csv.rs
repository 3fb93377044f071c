//! The report's CSV tables as a user reads them, for the tests.

/// Rows of a CSV file as column → value (fields may be quoted, with `""` escapes).
pub fn rows(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let split = |line: &str| {
        let (mut out, mut field, mut quoted) = (Vec::new(), String::new(), false);
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                '"' => quoted = !quoted,
                ',' if !quoted => out.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        out.push(field);
        out
    };
    let mut lines = text.lines();
    let header = split(lines.next().unwrap_or_default());
    lines
        .map(|l| header.iter().cloned().zip(split(l)).collect())
        .collect()
}

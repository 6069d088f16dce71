//! The README as test data: the configuration and error tables are checked against the code
//! that defines them (`config.rs`, `status.rs`), so the two cannot drift apart.

/// The README, as built.
pub(crate) const README: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));

/// The text of the section headed `## {heading}`, up to the next `## ` heading.
pub(crate) fn section(heading: &str) -> &'static str {
    README
        .split(&format!("\n## {heading}\n"))
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap_or_else(|| panic!("README has no {heading} section"))
}

/// The cells of the first table in `text`, header row first (the `|---|` row included).
pub(crate) fn first_table(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

//! Every document reference in the repository resolves inside it: a path ending in `.md` names a file that exists,
//! and one followed by `#anchor` names a heading of that file, and nothing points at the design notes this project was started
//! from, which live outside the repository and which a clone does not have.
//!
//! Section references are anchors (`docs/protocols/pace.md#return-codes`), never numbers after a `§`, because
//! numbers drift when a document grows; a `.md §` is therefore refused outright.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every text file of the repository (build output, VCS data and other hidden folders but `.ci` left out).
fn text_files() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if name == "target" || (name.starts_with('.') && name != ".ci") {
                    continue;
                }
                walk(&path, out);
            } else if let Ok(text) = std::fs::read_to_string(&path) {
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    out
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped, spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// The anchors of a Markdown text's headings (outside code fences), with GitHub's `-1`, `-2` for repeats.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if fenced || hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let mut anchor = base.clone();
        let mut n = 0;
        while !seen.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
    }
    seen
}

/// One `….md` reference found in a text: the path as written, its anchor, and what follows it.
struct Reference<'a> {
    path: &'a str,
    anchor: Option<&'a str>,
    rest: &'a str,
    line: usize,
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

/// The repository-relative `.md` references of `text`: URLs, absolute paths and shell variables are not ours.
fn references(text: &str) -> Vec<Reference<'_>> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(".md").map(|i| from + i) {
        from = at + 3;
        let end = at + 3;
        if text[end..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let start =
            text[..at].char_indices().rev().find(|&(_, c)| !is_path_char(c)).map_or(0, |(i, c)| i + c.len_utf8());
        let path = &text[start..end];
        let before = text[..start].chars().next_back();
        let stem = path.rsplit('/').next().unwrap_or(path);
        if path.starts_with('/')
            || before == Some('$')
            || before == Some(':')
            || !stem.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            continue;
        }
        let (anchor, rest) = match text[end..].strip_prefix('#') {
            Some(after) => {
                let len = after.find(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_')).unwrap_or(after.len());
                (Some(&after[..len]), &after[len..])
            }
            None => (None, &text[end..]),
        };
        found.push(Reference { path, anchor, rest, line: text[..at].matches('\n').count() + 1 });
    }
    found
}

#[test]
fn document_references_resolve_inside_the_repository() {
    let root = root();
    let files = text_files();
    // Spelled in pieces so that this file does not match itself.
    let outside = [
        format!("..{}shared", '/'),
        format!("work/{}", "shared"),
        format!("{}.md", "DESIGN"),
        format!("{}.md", "STYLE"),
        format!("{}{}.md", "ECO", "SYSTEM"),
        format!("{}.md", "MQTT"),
    ];
    let mut problems = Vec::new();
    for (path, text) in &files {
        let shown = path.strip_prefix(&root).unwrap_or(path).display().to_string();
        for (n, line) in text.lines().enumerate() {
            for name in &outside {
                if line.contains(name.as_str()) {
                    problems.push(format!("{shown}:{}: names {name}, which is outside the repository", n + 1));
                }
            }
        }
        if path.extension().is_some_and(|e| e == "md") {
            // Links within the same document: `[text](#anchor)`.
            let own = anchors(text);
            for (n, line) in text.lines().enumerate() {
                for piece in line.split("](#").skip(1) {
                    let anchor = piece.split(')').next().unwrap_or_default();
                    if !own.contains(anchor) {
                        problems.push(format!("{shown}:{}: no heading here for #{anchor}", n + 1));
                    }
                }
            }
        }
        let dir = path.parent().unwrap_or(&root);
        for reference in references(text) {
            let at = format!("{shown}:{}", reference.line);
            // A path with a folder is taken from the root or from the file's folder; a bare name may also be the
            // one file of that name anywhere (`DOCS.md` beside the add-on's files).
            let mut candidates = vec![root.join(reference.path), dir.join(reference.path)];
            if !reference.path.contains('/') {
                let same_name: Vec<&PathBuf> =
                    files.iter().map(|(p, _)| p).filter(|p| p.ends_with(reference.path)).collect();
                if let [only] = same_name.as_slice() {
                    candidates.push((*only).clone());
                }
            }
            let Some(target) = candidates.into_iter().find(|p| p.is_file()) else {
                problems.push(format!("{at}: {} does not exist in the repository", reference.path));
                continue;
            };
            if reference.rest.trim_start_matches([' ', '`', '\u{a0}']).starts_with('§') {
                problems.push(format!(
                    "{at}: {} is followed by a section number; point at a heading instead ({}#anchor)",
                    reference.path, reference.path
                ));
            }
            if let Some(anchor) = reference.anchor {
                let markdown = std::fs::read_to_string(&target).unwrap();
                if !anchors(&markdown).contains(anchor) {
                    problems.push(format!("{at}: {} has no heading for #{anchor}", reference.path));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{} broken document references:\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn the_reference_check_sees_what_it_must() {
    // The checker itself: anchors as GitHub makes them, references found and their surroundings kept.
    let headings =
        anchors("# Pace (`protocol: pace`)\n## 0x42 analog values\n```\n# not a heading\n```\n## Timing\n## Timing\n");
    let expected: BTreeSet<String> =
        ["pace-protocol-pace", "0x42-analog-values", "timing", "timing-1"].into_iter().map(String::from).collect();
    assert_eq!(headings, expected);
    let text =
        format!("see docs/protocols/pace.md#timing, `{}.md` §3, $here/DOCS.md, https://x.org/a.md, /b.md", "README");
    let found: Vec<(&str, Option<&str>)> = references(&text).iter().map(|r| (r.path, r.anchor)).collect();
    assert_eq!(found, [("docs/protocols/pace.md", Some("timing")), ("README.md", None)]);
    assert!(references(&text)[1].rest.trim_start_matches([' ', '`']).starts_with('§'));
}

//! The docs cannot send a reader nowhere: every relative link in `README.md` and
//! `docs/` names a file that exists and, with `#anchor`, a heading in it (GitHub's way of
//! making anchors from headings). The configuration reference is checked against the
//! parser by the unit tests in `src/config/docs_tests.rs`; the README's verification
//! snippets run against real requests in `tests/common` (`python_over`) and
//! `scripts/interop.sh`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn docs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files
}

/// GitHub's anchor for a heading: lower case, spaces to hyphens, other punctuation gone.
fn anchor(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_lowercase().next().unwrap_or(c)),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#').trim()));
        }
    }
    out
}

/// `(target, line)` of every `[text](target)` outside code blocks.
fn links(text: &str) -> Vec<(String, usize)> {
    let mut in_code = false;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((after[..end].to_string(), n + 1));
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut broken = Vec::new();
    for file in docs() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (target, line) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if path.is_empty() { file.clone() } else { file.parent().unwrap().join(path) };
            let shown = format!("{}:{line}: {target}", file.display());
            if !resolved.exists() {
                broken.push(format!("{shown} (no such file)"));
                continue;
            }
            if !fragment.is_empty() {
                let there = std::fs::read_to_string(&resolved).unwrap_or_default();
                if !anchors(&there).contains(fragment) {
                    broken.push(format!("{shown} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_are_made_as_github_makes_them() {
    assert_eq!(anchor("Metered links and bandwidth budgets"), "metered-links-and-bandwidth-budgets");
    assert_eq!(anchor("`[link]` and `[link.metered]`"), "link-and-linkmetered");
    assert_eq!(anchor("MQTT 5 properties"), "mqtt-5-properties");
    assert_eq!(links("see [a](b.md#c) and [d](e)"), vec![("b.md#c".to_string(), 1), ("e".to_string(), 1)]);
}

/// The docs speak of the agent, not of how the work on it was organised: no issue
/// numbers, no "this round".
#[test]
fn the_docs_do_not_speak_of_the_process() {
    let process = process_words();
    let mut found = Vec::new();
    for path in docs() {
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let lower = line.to_lowercase();
            if process.iter().any(|w| lower.contains(w)) || mentions_an_issue(&lower) {
                found.push(format!("{}:{}: {line}", path.display(), n + 1));
            }
        }
    }
    assert!(found.is_empty(), "the process in the docs:\n{}", found.join("\n"));
}

fn process_words() -> [&'static str; 4] {
    ["this round", "last round", "set out to stop", "this session"]
}

/// "issue 14", "issue #14", "(#14)": our own issue numbers. Another project's issue, named
/// with its repository (`Yakifo/amqtt#401`), is a reference and stays.
fn mentions_an_issue(line: &str) -> bool {
    let bytes = line.as_bytes();
    for (i, _) in line.match_indices("issue ") {
        let rest = &line[i + 6..];
        let rest = rest.strip_prefix('#').unwrap_or(rest);
        if rest.starts_with(|c: char| c.is_ascii_digit()) {
            return true;
        }
    }
    for (i, _) in line.match_indices('#') {
        let digit_after = bytes.get(i + 1).is_some_and(|b| b.is_ascii_digit());
        let word_before = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'/');
        if digit_after && !word_before {
            return true;
        }
    }
    false
}

/// The README says where `cross/package.sh` puts each package, as the script does.
#[test]
fn the_readme_names_the_package_path_the_script_writes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let script = std::fs::read_to_string(root.join("cross/package.sh")).unwrap();
    assert!(script.contains("--output \"target/$TARGET/debian/\""), "the script's output directory changed");
    let line = readme.lines().find(|l| l.starts_with("cross/package.sh amd64")).expect("the README's amd64 line");
    assert!(
        line.contains("target/x86_64-unknown-linux-gnu/debian/fleethook_<version>-1_amd64.deb"),
        "the README's package path is not where cross/package.sh writes it: {line}"
    );
}

//! Maps between key paths (`subscription[1].url`) and lines of the TOML source, so that
//! every config error can name file, line and key.

use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A dotted key path into the config, as shown to the operator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    pub fn key(&self, name: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(name.to_string()));
        KeyPath(segs)
    }

    pub fn index(&self, i: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(i));
        KeyPath(segs)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// 1-based line of a byte offset.
pub fn line_of(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The span of the deepest existing part of `path`: the key itself when present, else its
/// nearest existing parent (a missing `secret` points at its `[[subscription]]` header).
pub fn span_of(doc: &Spanned<DeTable<'_>>, path: &KeyPath) -> Option<Range<usize>> {
    let mut best: Option<Range<usize>> = None;
    let mut value: &DeValue<'_> = &DeValue::Table(doc.get_ref().clone());
    for seg in &path.0 {
        match (seg, value) {
            (Seg::Key(k), DeValue::Table(t)) => {
                let Some((key, v)) = t.iter().find(|(key, _)| key.get_ref().as_ref() == k) else {
                    return best;
                };
                best = Some(key.span());
                value = v.get_ref();
            }
            (Seg::Index(i), DeValue::Array(a)) => {
                let Some(v) = a.get(*i) else { return best };
                best = Some(v.span());
                value = v.get_ref();
            }
            _ => return best,
        }
    }
    best
}

/// The deepest key path whose value contains `offset`: where a deserialisation error sits.
pub fn path_at(doc: &Spanned<DeTable<'_>>, offset: usize) -> KeyPath {
    // A table's own span may cover only its header, so every child is searched, not just
    // those whose parent span contains the offset.
    fn walk(value: &DeValue<'_>, offset: usize, path: &KeyPath) -> Option<KeyPath> {
        match value {
            DeValue::Table(t) => t.iter().find_map(|(k, v)| {
                let here = path.key(k.get_ref());
                walk(v.get_ref(), offset, &here)
                    .or_else(|| (v.span().contains(&offset) || k.span().contains(&offset)).then_some(here))
            }),
            DeValue::Array(a) => a.iter().enumerate().find_map(|(i, v)| {
                let here = path.index(i);
                walk(v.get_ref(), offset, &here).or_else(|| v.span().contains(&offset).then_some(here))
            }),
            _ => None,
        }
    }
    walk(&DeValue::Table(doc.get_ref().clone()), offset, &KeyPath::root()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "device_id = \"a\"\n\n[[subscription]]\nname = \"x\"\nretry = [\"1s\", \"oops\"]\n";

    #[test]
    fn finds_lines_of_nested_keys() {
        let doc = DeTable::parse(SRC).unwrap();
        let path = KeyPath::root().key("subscription").index(0).key("retry").index(1);
        let span = span_of(&doc, &path).unwrap();
        assert_eq!(line_of(SRC, span.start), 5);
        assert_eq!(path.to_string(), "subscription[0].retry[1]");
        let missing = KeyPath::root().key("subscription").index(0).key("secret");
        assert_eq!(line_of(SRC, span_of(&doc, &missing).unwrap().start), 3);
    }

    #[test]
    fn maps_an_offset_back_to_its_key() {
        let doc = DeTable::parse(SRC).unwrap();
        let offset = SRC.find("oops").unwrap();
        assert_eq!(path_at(&doc, offset).to_string(), "subscription[0].retry[1]");
    }
}

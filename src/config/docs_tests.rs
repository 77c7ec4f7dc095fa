//! The docs cannot drift from the parser: every key the parser accepts is in
//! `docs/configuration.md` and in `config/fleethook.toml`, and every key the reference
//! lists is one the parser accepts. The keys come from the raw structs themselves, read
//! through serde (the field names a derived `Deserialize` asks for).

use std::collections::{BTreeMap, BTreeSet};

use serde::de::{self, DeserializeOwned, Visitor};

use super::raw::*;

/// A deserializer that only notes the field names a struct asks for.
struct Names<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for Names<'_> {
    type Error = de::value::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("names taken"))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

fn keys_of<T: DeserializeOwned>() -> BTreeSet<String> {
    let mut names = None;
    let _ = T::deserialize(Names(&mut names));
    names.expect("a struct").iter().map(|s| s.to_string()).collect()
}

/// Every section the parser reads, by its path in the file, with its keys.
fn parser_keys() -> BTreeMap<&'static str, BTreeSet<String>> {
    BTreeMap::from([
        ("", keys_of::<RawConfig>()),
        ("mqtt", keys_of::<RawMqtt>()),
        ("storage", keys_of::<RawStorage>()),
        ("status", keys_of::<RawStatus>()),
        ("heartbeat", keys_of::<RawHeartbeat>()),
        ("metrics", keys_of::<RawMetrics>()),
        ("ros", keys_of::<RawRos>()),
        ("delivery", keys_of::<RawDelivery>()),
        ("link", keys_of::<RawLink>()),
        ("link.metered", keys_of::<RawMetered>()),
        ("route", keys_of::<RawRoute>()),
        ("subscription", keys_of::<RawSubscription>()),
        ("subscription.batch", keys_of::<RawBatch>()),
        ("subscription.metered", keys_of::<RawMeteredSubscription>()),
        ("subscription.auth", keys_of::<RawAuth>()),
    ])
}

fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect(path)
}

/// The keys `docs/configuration.md` lists, by section: a `## ` heading names a section
/// by its first `` `[…]` `` (none: the top level); a line starting `` `[a.b]` `` or
/// `` `name = { … }` `` opens a subsection; a table row's first cell `` `key` `` is a key.
fn documented_keys(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let (mut section, mut current) = (String::new(), String::new());
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            section = heading
                .split('`')
                .nth(1)
                .map(|s| s.trim_matches(|c| c == '[' || c == ']').to_string())
                .unwrap_or_default();
            current = section.clone();
        } else if let Some(rest) = line.strip_prefix('`') {
            let name = rest.split('`').next().unwrap_or_default();
            if let Some(table) = name.strip_prefix('[') {
                current = table.trim_end_matches(']').to_string();
            } else if let Some((key, _)) = name.split_once(" = {") {
                current = format!("{section}.{key}");
            }
        } else if let Some(cell) = line.strip_prefix("| `") {
            let key = cell.split('`').next().unwrap_or_default();
            out.entry(current.clone()).or_default().insert(key.to_string());
        }
    }
    out
}

#[test]
fn the_configuration_reference_lists_exactly_the_keys_the_parser_accepts() {
    let documented = documented_keys(&read("docs/configuration.md"));
    let parser = parser_keys();
    for (section, keys) in &parser {
        let listed = documented.get(*section).cloned().unwrap_or_default();
        let missing: Vec<_> = keys.difference(&listed).collect();
        assert!(missing.is_empty(), "docs/configuration.md lacks [{section}] {missing:?}");
        let unknown: Vec<_> = listed.difference(keys).collect();
        assert!(unknown.is_empty(), "docs/configuration.md lists [{section}] {unknown:?}, which the parser refuses");
    }
    let stray: Vec<_> = documented.keys().filter(|s| !parser.contains_key(s.as_str())).collect();
    assert!(stray.is_empty(), "docs/configuration.md has sections the parser does not read: {stray:?}");
}

/// The example's text per table header (`[mqtt]`, `[[route]]`, `[link.metered]`), comments
/// included: a key may be shown commented out.
fn example_sections(text: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') && !t.starts_with("[\"") {
            current = t.trim_start_matches('[').split(']').next().unwrap_or_default().to_string();
        }
        out.entry(current.clone()).or_default().push_str(&format!("{line}\n"));
    }
    out
}

fn mentions(text: &str, key: &str) -> bool {
    text.match_indices(key).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + key.len()..].trim_start();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') && after.starts_with('=')
    })
}

#[test]
fn the_example_config_shows_every_key_the_parser_accepts() {
    let example = read("config/fleethook.toml");
    let sections = example_sections(&example);
    let mut missing = Vec::new();
    for (section, keys) in parser_keys() {
        // Inline tables (`batch = { … }`) are shown within their table's text.
        let table = section.split_once(".batch").or(section.split_once(".metered")).or(section.split_once(".auth"));
        let text = match table {
            Some(("subscription", _)) => sections.get("subscription").cloned().unwrap_or_default(),
            _ => sections.get(section).cloned().unwrap_or_default(),
        };
        for key in keys {
            let shown =
                mentions(&text, &key) || sections.contains_key(format!("{section}.{key}").trim_start_matches('.'));
            if !shown {
                missing.push(format!("[{section}] {key}"));
            }
        }
    }
    assert!(missing.is_empty(), "config/fleethook.toml does not show {missing:?}");
}

#[test]
fn the_example_config_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fleethook.toml");
    super::Config::load_for_check(&path).expect("config/fleethook.toml loads");
}

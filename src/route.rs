//! Routes: which MQTT topics become which events. Pure functions: topic filters with `+`
//! and `#`, and templates that take `{/json/pointer}` from the payload, `{topic.N}` from
//! the topic, or `{prop.NAME}` from an MQTT 5 user property.

use serde_json::Value;

/// An MQTT subscription filter, matched the way the broker matches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicFilter {
    source: String,
    levels: Vec<String>,
}

impl TopicFilter {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty topic filter".into());
        }
        let levels: Vec<String> = s.split('/').map(str::to_string).collect();
        for (i, level) in levels.iter().enumerate() {
            if level.contains('#') && (level != "#" || i + 1 != levels.len()) {
                return Err(format!("topic filter `{s}`: `#` must be the whole last level"));
            }
            if level.contains('+') && level != "+" {
                return Err(format!("topic filter `{s}`: `+` must be a whole level"));
            }
        }
        Ok(TopicFilter { source: s.to_string(), levels })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// How many levels a matching topic has at least (`#` may match zero).
    pub fn fixed_levels(&self) -> usize {
        self.levels.iter().filter(|l| *l != "#").count()
    }

    pub fn has_multi_level_wildcard(&self) -> bool {
        self.levels.last().is_some_and(|l| l == "#")
    }

    pub fn matches(&self, topic: &str) -> bool {
        let parts: Vec<&str> = topic.split('/').collect();
        // MQTT: wildcards at the first level do not match topics starting with `$`.
        if topic.starts_with('$') && matches!(self.levels.first().map(String::as_str), Some("+" | "#")) {
            return false;
        }
        for (i, level) in self.levels.iter().enumerate() {
            match level.as_str() {
                "#" => return true,
                "+" => {
                    if i >= parts.len() {
                        return false;
                    }
                }
                lit => {
                    if parts.get(i) != Some(&lit) {
                        return false;
                    }
                }
            }
        }
        parts.len() == self.levels.len()
    }
}

impl serde::Serialize for TopicFilter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl serde::Serialize for Template {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Pointer(String),
    TopicLevel(usize),
    /// An MQTT 5 user property of the message: `{prop.robot}`.
    Property(String),
}

/// `mission.{/status}`, `{topic.1}`, or a literal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses a template; `filter` is the route's topic filter, which `{topic.N}` must fit.
    pub fn parse(s: &str, filter: &TopicFilter) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("template `{s}`: `{{` without a closing `}}`"));
            };
            let inner = &rest[open + 1..open + close];
            parts.push(parse_placeholder(s, inner, filter)?);
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("template `{s}`: `}}` without an opening `{{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        if parts.is_empty() {
            return Err("template is empty".into());
        }
        Ok(Template { source: s.to_string(), parts })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Renders against one message (its topic, decoded payload and MQTT 5 user
    /// properties); the error says what the message lacked.
    pub fn render(&self, topic: &str, payload: &Value, props: &[(String, String)]) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Pointer(p) => match payload.pointer(p) {
                    Some(Value::String(s)) if !s.is_empty() => out.push_str(s),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => out.push_str(&v.to_string()),
                    Some(Value::String(_)) => return Err(format!("payload {p} is an empty string")),
                    Some(_) => return Err(format!("payload {p} is not a string, number or bool")),
                    None => return Err(format!("payload has no {p}")),
                },
                Part::TopicLevel(n) => match topic.split('/').nth(*n) {
                    Some(level) if !level.is_empty() => out.push_str(level),
                    _ => return Err(format!("topic `{topic}` has no level {n}")),
                },
                Part::Property(name) => match props.iter().find(|(k, _)| k == name) {
                    Some((_, v)) if !v.is_empty() => out.push_str(v),
                    _ => return Err(format!("the message has no user property `{name}` (MQTT 5)")),
                },
            }
        }
        Ok(out)
    }
}

fn parse_placeholder(src: &str, inner: &str, filter: &TopicFilter) -> Result<Part, String> {
    if inner.starts_with('/') {
        return Ok(Part::Pointer(inner.to_string()));
    }
    if let Some(n) = inner.strip_prefix("topic.") {
        let n: usize = n.parse().map_err(|_| format!("template `{src}`: `{{{inner}}}` needs a level number"))?;
        if n >= filter.fixed_levels() && !filter.has_multi_level_wildcard() {
            return Err(format!(
                "template `{src}`: `{{topic.{n}}}` references nothing: topic filter `{}` has levels 0..{}",
                filter.as_str(),
                filter.fixed_levels().saturating_sub(1)
            ));
        }
        return Ok(Part::TopicLevel(n));
    }
    if let Some(name) = inner.strip_prefix("prop.")
        && !name.is_empty()
    {
        return Ok(Part::Property(name.to_string()));
    }
    Err(format!(
        "template `{src}`: `{{{inner}}}` references nothing (use {{/json/pointer}}, {{topic.N}} or {{prop.NAME}})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_match_like_mqtt() {
        let f = TopicFilter::parse("fleet/+/mission").unwrap();
        assert!(f.matches("fleet/agv-1/mission"));
        assert!(!f.matches("fleet/agv-1/mission/x"));
        assert!(!f.matches("fleet/mission"));
        let h = TopicFilter::parse("fleet/#").unwrap();
        assert!(h.matches("fleet"));
        assert!(h.matches("fleet/a/b/c"));
        assert!(!h.matches("other/a"));
        assert!(!TopicFilter::parse("#").unwrap().matches("$SYS/broker"));
        assert!(TopicFilter::parse("a/#/b").is_err());
        assert!(TopicFilter::parse("a/b+").is_err());
    }

    #[test]
    fn templates_render_pointers_and_levels() {
        let f = TopicFilter::parse("fleet/+/mission").unwrap();
        let t = Template::parse("mission.{/status}", &f).unwrap();
        let payload = json!({"status": "completed", "n": 3});
        assert_eq!(t.render("fleet/a/mission", &payload, &[]).unwrap(), "mission.completed");
        let d = Template::parse("{topic.1}", &f).unwrap();
        assert_eq!(d.render("fleet/agv-9/mission", &payload, &[]).unwrap(), "agv-9");
        let n = Template::parse("n{/n}", &f).unwrap();
        assert_eq!(n.render("fleet/a/mission", &payload, &[]).unwrap(), "n3");
        let err = t.render("fleet/a/mission", &json!({}), &[]).unwrap_err();
        assert!(err.contains("/status"), "{err}");
    }

    #[test]
    fn templates_that_reference_nothing_are_refused() {
        let f = TopicFilter::parse("fleet/+/mission").unwrap();
        assert!(Template::parse("{topic.3}", &f).unwrap_err().contains("references nothing"));
        assert!(Template::parse("{status}", &f).unwrap_err().contains("references nothing"));
        assert!(Template::parse("mission.{/status", &f).is_err());
        assert!(Template::parse("", &f).is_err());
        let deep = TopicFilter::parse("fleet/#").unwrap();
        assert!(Template::parse("{topic.4}", &deep).is_ok());
    }
}

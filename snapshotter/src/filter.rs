//! containerd's snapshot filters (`List` / `Walk`), the part that applies
//! to snapshot info: `name`, `parent`, `kind` and `labels.KEY`, with `==`,
//! `!=` or presence; selectors joined by `,` must all hold, and a snapshot
//! is listed when any one filter holds. Regex matches (`~=`) are refused
//! rather than guessed at.

use crate::error::{Error, Result};
use crate::store::{Kind, Record};

#[derive(Debug, PartialEq)]
enum Op {
    Present,
    Eq(String),
    Ne(String),
}

#[derive(Debug, PartialEq)]
struct Selector {
    field: Vec<String>,
    op: Op,
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        s[1..s.len() - 1].replace("\\\"", "\"")
    } else {
        s.to_string()
    }
}

/// Splits on `sep` outside double quotes.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut prev = '\0';
    for (i, c) in s.char_indices() {
        if c == '"' && prev != '\\' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
        prev = c;
    }
    parts.push(&s[start..]);
    parts
}

fn parse_selector(s: &str) -> Result<Selector> {
    let bad = |why: &str| Error::InvalidArgument(format!("filter {s:?}: {why}"));
    if s.contains("~=") {
        return Err(bad("regular expression matches (~=) are not supported"));
    }
    let (path, op) = if let Some((p, v)) = s.split_once("!=") {
        (p, Op::Ne(unquote(v)))
    } else if let Some((p, v)) = s.split_once("==") {
        (p, Op::Eq(unquote(v)))
    } else {
        (s, Op::Present)
    };
    let path = path.trim();
    let field: Vec<String> = match path.split_once('.') {
        Some((head, rest)) => vec![head.to_string(), unquote(rest)],
        None => vec![path.to_string()],
    };
    match field[0].as_str() {
        "name" | "parent" | "kind" if field.len() == 1 => {}
        "labels" if field.len() == 2 => {}
        _ => return Err(bad("fields are name, parent, kind and labels.KEY")),
    }
    Ok(Selector { field, op })
}

/// A parsed set of filters.
#[derive(Debug, Default)]
pub struct Filters(Vec<Vec<Selector>>);

impl Filters {
    /// Parses containerd filter strings; none means everything matches.
    pub fn parse(filters: &[String]) -> Result<Filters> {
        let mut out = Vec::new();
        for f in filters.iter().filter(|f| !f.trim().is_empty()) {
            out.push(
                split_outside_quotes(f, ',')
                    .into_iter()
                    .map(parse_selector)
                    .collect::<Result<Vec<_>>>()?,
            );
        }
        Ok(Filters(out))
    }

    /// Whether snapshot `name` matches.
    pub fn matches(&self, name: &str, record: &Record) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let kind = match record.kind {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "committed",
        };
        self.0.iter().any(|all| {
            all.iter().all(|sel| {
                let value: Option<&str> = match sel.field[0].as_str() {
                    "name" => Some(name),
                    "parent" => Some(record.parent.as_str()),
                    "kind" => Some(kind),
                    _ => record.labels.get(&sel.field[1]).map(String::as_str),
                };
                match &sel.op {
                    Op::Present => value.is_some_and(|v| !v.is_empty()),
                    Op::Eq(want) => value == Some(want.as_str()),
                    Op::Ne(want) => value != Some(want.as_str()),
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn selectors() {
        let now = std::time::SystemTime::now();
        let mut labels = BTreeMap::new();
        labels.insert("containerd.io/gc.root".to_string(), "x".to_string());
        let r = Record {
            id: 1,
            kind: Kind::Committed,
            parent: "p".into(),
            labels,
            created: now,
            updated: now,
            size: 0,
            inodes: 0,
        };
        let m = |f: &[&str]| {
            Filters::parse(&f.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap()
                .matches("n", &r)
        };
        assert!(m(&[]));
        assert!(m(&["name==n"]));
        assert!(!m(&["name==m"]));
        assert!(m(&["name==m", "kind==committed"]));
        assert!(!m(&["name==n,parent!=p"]));
        assert!(m(&[r#"labels."containerd.io/gc.root""#]));
        assert!(m(&[r#"labels."containerd.io/gc.root"==x,kind!=active"#]));
        assert!(!m(&["labels.other"]));
        assert!(Filters::parse(&["name~=n".into()]).is_err());
        assert!(Filters::parse(&["size==1".into()]).is_err());
    }
}

//! A TOML parameter table parsed into a template's or component kind's own
//! typed `Params`, once; a value that does not fit comes back as a
//! [`ParamError`] holding the key path (`tower.units[1]`), so that whoever
//! holds the text (the runner) can name the file, line and key, and the
//! default value of that key as an example of the expected syntax.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// One step of a key path inside a table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeySegment {
    Key(String),
    Index(usize),
}

/// A key path, printed as TOML writes it (`tower.units[1]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<KeySegment>);

impl KeyPath {
    pub fn key(mut self, k: impl Into<String>) -> Self {
        self.0.push(KeySegment::Key(k.into()));
        self
    }
    pub fn index(mut self, i: usize) -> Self {
        self.0.push(KeySegment::Index(i));
        self
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The last key (not index) of the path: the name a user wrote.
    pub fn last_key(&self) -> Option<&str> {
        self.0.iter().rev().find_map(|s| match s {
            KeySegment::Key(k) => Some(k.as_str()),
            KeySegment::Index(_) => None,
        })
    }
    /// This path followed by `rest`.
    pub fn join(&self, rest: &KeyPath) -> KeyPath {
        KeyPath(self.0.iter().chain(&rest.0).cloned().collect())
    }

    fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment;
        KeyPath(
            path.iter()
                .filter_map(|s| match s {
                    Segment::Seq { index } => Some(KeySegment::Index(*index)),
                    Segment::Map { key } => Some(KeySegment::Key(key.clone())),
                    Segment::Enum { variant } => Some(KeySegment::Key(variant.clone())),
                    Segment::Unknown => None,
                })
                .collect(),
        )
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.0 {
            match s {
                KeySegment::Key(k) if first => write!(f, "{k}")?,
                KeySegment::Key(k) => write!(f, ".{k}")?,
                KeySegment::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// Parameters that do not parse: where, what, and what the value should look like.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamError {
    /// The failing key inside the parameter table (empty: the table itself,
    /// e.g. a missing key).
    pub path: KeyPath,
    /// serde's account of the problem (`invalid type: string "eight",
    /// expected usize`).
    pub message: String,
    /// The key's default value, whose TOML syntax is what the key expects.
    pub example: Option<toml::Value>,
}

impl ParamError {
    /// `key = value` for the example, when there is one.
    pub fn example_assignment(&self) -> Option<String> {
        let key = self.path.last_key()?;
        let value = self.example.as_ref()?;
        Some(format!("{key} = {}", inline(value)))
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "`{}`: ", self.path)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(e) = self.example_assignment() {
            write!(f, " (expected like `{e}`)")?;
        }
        Ok(())
    }
}

/// A TOML value as written inline (`[8, 8]`, `"relu"`, `{ a = 1 }`).
pub fn inline(value: &toml::Value) -> String {
    match value {
        toml::Value::Table(t) => {
            let body: Vec<String> = t.iter().map(|(k, v)| format!("{k} = {}", inline(v))).collect();
            format!("{{ {} }}", body.join(", "))
        }
        toml::Value::Array(a) => format!("[{}]", a.iter().map(inline).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

/// Parses `table` into `T`. `T` should `deny_unknown_fields` (a misspelt key
/// is then an error with its path, never ignored); its `Default` gives the
/// examples of the expected syntax.
pub fn parse_params<T: DeserializeOwned + Serialize + Default>(table: &toml::Table) -> Result<T, ParamError> {
    parse_value(toml::Value::Table(table.clone()), Some(&to_table(&T::default())))
}

/// Parses `value` into `T`; `examples` (a table of typical values, e.g.
/// the defaults) supplies the example of the failing key's syntax.
pub fn parse_value<T: DeserializeOwned>(value: toml::Value, examples: Option<&toml::Table>) -> Result<T, ParamError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = KeyPath::from_serde(e.path());
        let example = examples.and_then(|t| example_at(t, &path));
        ParamError {
            path,
            message: e.inner().message().to_string(),
            example,
        }
    })
}

/// The value at `path` in `defaults`; inside a list, the list's first
/// element (or the list, if the path ends at its element).
fn example_at(defaults: &toml::Table, path: &KeyPath) -> Option<toml::Value> {
    let mut cur = toml::Value::Table(defaults.clone());
    for s in &path.0 {
        cur = match (s, cur) {
            (KeySegment::Key(k), toml::Value::Table(mut t)) => t.remove(k)?,
            // An element of a list: the default list's element at that
            // place, else its first (an empty list shows no element).
            (KeySegment::Index(i), toml::Value::Array(a)) => a.get(*i).or(a.first())?.clone(),
            _ => return None,
        };
    }
    Some(cur)
}

/// A typed parameter struct as a TOML table (every field written out).
pub fn to_table<T: Serialize>(value: &T) -> toml::Table {
    match toml::Value::try_from(value) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        units: Vec<usize>,
        bias: bool,
    }
    impl Default for Inner {
        fn default() -> Self {
            Self {
                units: vec![16],
                bias: false,
            }
        }
    }
    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Outer {
        experts: usize,
        tower: Inner,
    }

    fn parse(text: &str) -> Result<Outer, ParamError> {
        parse_params(&toml::from_str::<toml::Table>(text).unwrap())
    }

    #[test]
    fn a_wrong_type_names_its_path_and_an_example() {
        let e = parse("experts = \"eight\"").unwrap_err();
        assert_eq!(e.path.to_string(), "experts");
        assert_eq!(e.example, Some(toml::Value::Integer(0)));
        let e = parse("tower = { units = [8, \"x\"] }").unwrap_err();
        assert_eq!(e.path.to_string(), "tower.units[1]");
        assert_eq!(e.example_assignment().as_deref(), Some("units = 16"));
        let e = parse("tower.units = \"8,8\"").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`tower.units`: invalid type: string \"8,8\", expected a sequence (expected like `units = [16]`)"
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_its_path() {
        let e = parse("tower = { units = [8], biass = true }").unwrap_err();
        assert_eq!(e.path.to_string(), "tower.biass");
        assert!(e.message.contains("unknown field `biass`"), "{}", e.message);
        assert_eq!(e.example, None);
    }

    #[test]
    fn good_parameters_parse() {
        let p = parse("experts = 3\n[tower]\nunits = [4, 2]").unwrap();
        assert_eq!(p.experts, 3);
        assert_eq!(p.tower.units, [4, 2]);
    }
}

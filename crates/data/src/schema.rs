//! The description of a tabular data set (CSV or Parquet files): which files,
//! how to read them, which columns are which kind of input, and the tasks.
//!
//! It is what a config's `[data]` section holds when `source = "csv"` or
//! `"parquet"`, and its `[[tasks]]` entries:
//!
//! ```toml
//! [data]
//! source = "csv"
//! dir = "census-income"             # relative to --data-dir / MTREC_DATA_DIR
//! train = "train.data.gz"           # or: path = "all.csv" (then `split` applies)
//! valid = "valid.data.gz"
//! test = "test.data.gz"
//! header = false
//! columns = ["age", "class of worker", "..."]
//! separator = ", "
//! sparse = ["class of worker", { name = "race", dim = 8, min_count = 5 }, { name = "zip", hash_buckets = 1000 }]
//! dense = ["age", { name = "capital gains", scaling = "log" }]
//! sequence = [{ name = "clicked", separator = "|", max_len = 20, share_with = "item" }]
//! domain = "scenario"
//! group = "user"                    # GAUC's groups (may also be a sparse feature)
//! weight = "instance weight"        # per-row loss weight, finite and >= 0
//! ignore = ["id"]
//!
//! [data.defaults]
//! embedding_dim = 4
//! min_count = 1
//! scaling = "minmax"
//!
//! [[tasks]]
//! name = "income"
//! kind = "binary"
//! label = { column = "income", equals = "50000+." }
//! ```
//!
//! Every struct rejects unknown keys (a typo is an error naming the key).
//! [`TabularSchema::check`] rejects descriptions that cannot work, before any
//! file is opened.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use mtrec_core::TaskKind;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{DataError, Result};

/// The file format of a tabular source.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Csv,
    Parquet,
}

impl FileFormat {
    /// The format of `path`: `.parquet` / `.pq` are Parquet, `.csv`, `.tsv`,
    /// `.txt`, `.data` (each optionally followed by `.gz`) are CSV; any other
    /// name takes `configured` (CSV when that is `None`).
    pub fn of(path: &Path, configured: Option<FileFormat>) -> FileFormat {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if name.ends_with(".parquet") || name.ends_with(".pq") {
            FileFormat::Parquet
        } else if [".csv", ".tsv", ".txt", ".data"].iter().any(|e| name.ends_with(e)) {
            FileFormat::Csv
        } else {
            configured.unwrap_or(FileFormat::Csv)
        }
    }
}

/// The field separator of a CSV file: any single character, or `", "` (a
/// comma followed by a space, as in the UCI census files: read as `,` with
/// every field trimmed). Written as a string in TOML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Separator {
    /// A single ASCII character (quoting with `"` is understood).
    Byte(u8),
    /// `", "`: comma, fields trimmed of surrounding whitespace.
    CommaSpace,
    /// A single non-ASCII character: lines are split on it, without quoting.
    Char(char),
}

impl Default for Separator {
    fn default() -> Self {
        Separator::Byte(b',')
    }
}

impl TryFrom<String> for Separator {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        let mut chars = s.chars();
        match (chars.next(), chars.next(), chars.next()) {
            (Some(','), Some(' '), None) => Ok(Separator::CommaSpace),
            (Some(c), None, None) if c.is_ascii() => Ok(Separator::Byte(c as u8)),
            (Some(c), None, None) => Ok(Separator::Char(c)),
            _ => Err(format!(
                "separator {s:?} must be a single character, or \", \" (comma and space)"
            )),
        }
    }
}

impl From<Separator> for String {
    fn from(s: Separator) -> String {
        match s {
            Separator::Byte(b) => char::from(b).to_string(),
            Separator::CommaSpace => ", ".to_string(),
            Separator::Char(c) => c.to_string(),
        }
    }
}

impl Serialize for Separator {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&String::from(self.clone()))
    }
}

impl<'de> Deserialize<'de> for Separator {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Separator::try_from(s).map_err(de::Error::custom)
    }
}

/// How a dense feature is scaled (after missing values are filled).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scaling {
    /// `(x - mean) / std` with the training mean and (population) standard
    /// deviation; `x - mean` when the deviation is 0.
    Standard,
    /// `(x - min) / (max - min)` with the training min and max (not clipped:
    /// other files may fall outside `[0, 1]`); `x - min` when max = min.
    #[default]
    Minmax,
    /// `ln(1 + x)`, for non-negative columns (counts, amounts): no
    /// statistics. A negative value (or `fill`) is an error naming its file,
    /// line and column, never clamped: use `signed-log` for such a column.
    Log,
    /// `sign(x) * ln(1 + |x|)`: `log` extended to negative values, odd and
    /// monotone (equal to `log` on `x >= 0`), for heavy-tailed columns of
    /// both signs (balances, changes). No statistics.
    #[serde(rename = "signed-log")]
    SignedLog,
    /// `x` as read.
    None,
}

/// How a sequence's embeddings are pooled: the model input layer's own
/// setting (`mtrec_core::Pooling`), so that the schema's choice is what the
/// model does.
pub use mtrec_core::Pooling;

/// `[data.defaults]`: what a field takes when it does not say.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Defaults {
    /// Embedding width of sparse and sequence fields.
    pub embedding_dim: usize,
    /// A training value seen fewer times than this maps to id 0 (OOV).
    pub min_count: u64,
    /// Scaling of dense fields.
    pub scaling: Scaling,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            embedding_dim: 4,
            min_count: 1,
            scaling: Scaling::Minmax,
        }
    }
}

/// Implements `Deserialize` for a field type that may be written as a bare
/// column name (a string) or as a table with `name` and options. Unlike a
/// serde untagged enum, a mistake inside the table (an unknown key, a wrong
/// type) keeps serde's own message, which names the key.
macro_rules! name_or_table {
    ($ty:ident) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a column name, or a table with `name` and options")
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<$ty, E> {
                        Ok($ty::named(v))
                    }
                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<$ty, A::Error> {
                        $ty::deserialize(de::value::MapAccessDeserializer::new(map))
                    }
                }
                d.deserialize_any(V)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                $ty::serialize(self, s)
            }
        }
    };
}

/// A categorical input column: `"name"` or `{ name, dim?, min_count?, hash_buckets? }`.
///
/// With a vocabulary (the default), the values seen at least `min_count`
/// times in the training rows get ids `1..`, and id 0 is out-of-vocabulary
/// (rarer or unseen values, and missing ones). With `hash_buckets = N`,
/// a value's id is `1 + FNV-1a-64(value) % N` and 0 is a missing value.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct SparseField {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_buckets: Option<u32>,
}

impl SparseField {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            dim: None,
            min_count: None,
            hash_buckets: None,
        }
    }
}
name_or_table!(SparseField);

/// A numeric input column: `"name"` or `{ name, scaling?, fill? }`.
///
/// Missing values (see [`TabularSchema::missing`], and `NaN`) become `fill`,
/// by default the training mean; then the value is scaled with statistics
/// of the training rows.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct DenseField {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Scaling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<f64>,
}

impl DenseField {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            scaling: None,
            fill: None,
        }
    }
}
name_or_table!(DenseField);

fn default_list_separator() -> String {
    "|".to_string()
}

fn default_max_len() -> usize {
    50
}

/// A list-valued column (`"a|b|c"` in CSV, a list or a string in Parquet):
/// `"name"` or `{ name, separator = "|", max_len = 50, pooling = "mean",
/// share_with?, dim?, min_count?, hash_buckets? }`.
///
/// Tokens are trimmed; empty and missing tokens are dropped; the first
/// `max_len` are kept. With `share_with = "field"` the tokens use that sparse
/// field's vocabulary (and, in a model, its embedding table); otherwise the
/// sequence has its own vocabulary (or hash buckets) fitted on the training
/// rows' tokens. `pooling` is what the model's input layer does with the
/// tokens' embeddings: their mean (default) or sum over the real tokens (an
/// empty list pools to zeros).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct SequenceField {
    pub name: String,
    #[serde(default = "default_list_separator")]
    pub separator: String,
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    #[serde(default)]
    pub pooling: Pooling,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_with: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_buckets: Option<u32>,
}

impl SequenceField {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            separator: default_list_separator(),
            max_len: default_max_len(),
            pooling: Pooling::Mean,
            share_with: None,
            dim: None,
            min_count: None,
            hash_buckets: None,
        }
    }
}
name_or_table!(SequenceField);

fn default_missing() -> Vec<String> {
    vec![String::new(), "?".to_string()]
}

/// `[data]` of a CSV or Parquet source.
///
/// Files: either `train`, `valid` and `test`, or one `path` that the caller
/// splits (`split`, `split_seed`). Relative paths are resolved against `dir`,
/// and a relative `dir` against the base folder given to
/// [`TabularSchema::resolve`] (the runner's `--data-dir` / `MTREC_DATA_DIR`).
///
/// `source`, `split` and `split_seed` are accepted so that a whole `[data]`
/// table can be read into this type; the data crate itself reads only
/// `source` (the format of files whose extension does not say).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TabularSchema {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<FileFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<[f64; 3]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_seed: Option<u64>,

    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<PathBuf>,

    /// CSV: the first line holds the column names (default true).
    pub header: bool,
    /// CSV: the column names, required when `header = false`; with a header,
    /// they replace the header's names (the counts must agree).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// CSV: the field separator (default `","`).
    pub separator: Separator,
    /// Values that mean "missing" (default `["", "?"]`), compared after the
    /// reader's trimming. For numbers, `NaN` is missing too.
    pub missing: Vec<String>,

    pub defaults: Defaults,
    pub sparse: Vec<SparseField>,
    pub dense: Vec<DenseField>,
    pub sequence: Vec<SequenceField>,
    /// A column whose values name each row's domain (scenario).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// A column whose values name each row's group (usually the user), for
    /// GAUC. Values are compared as text (hashed with the stable FNV-1a-64,
    /// never through a vocabulary, so unseen users stay apart); a missing
    /// value is an error. It may also be a sparse feature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A numeric column whose value weighs each row's loss in every task
    /// (finite and >= 0; a missing or bad value is an error naming the
    /// file and row). It may also be a dense feature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<String>,
    /// Columns deliberately not used. A name not in a file is allowed (e.g.
    /// an id column only the prediction files have).
    pub ignore: Vec<String>,
    /// When false (the default), a file column that is neither used nor in
    /// `ignore` is an error (it catches misspelt names).
    pub ignore_rest: bool,
}

impl Default for TabularSchema {
    fn default() -> Self {
        Self {
            source: None,
            split: None,
            split_seed: None,
            dir: None,
            path: None,
            train: None,
            valid: None,
            test: None,
            header: true,
            columns: None,
            separator: Separator::default(),
            missing: default_missing(),
            defaults: Defaults::default(),
            sparse: Vec::new(),
            dense: Vec::new(),
            sequence: Vec::new(),
            domain: None,
            group: None,
            weight: None,
            ignore: Vec::new(),
            ignore_rest: false,
        }
    }
}

/// The files of a tabular source, resolved to paths that can be opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataFiles {
    /// One file per part.
    Separate {
        train: PathBuf,
        valid: PathBuf,
        test: PathBuf,
    },
    /// One file, split by the caller (seeded, by row).
    Single { path: PathBuf },
}

/// A value in a task rule: written as a string or a number in TOML, compared
/// as text, or as numbers when both sides read as numbers (`1` = `"1.0"`).
#[derive(Clone, Debug, PartialEq)]
pub struct RuleValue(pub String);

impl Serialize for RuleValue {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RuleValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RuleValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<RuleValue, E> {
                Ok(RuleValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<RuleValue, E> {
                Ok(RuleValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<RuleValue, E> {
                Ok(RuleValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<RuleValue, E> {
                Ok(RuleValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<RuleValue, E> {
                Ok(RuleValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A column and at most one condition on its value: `"column"` or
/// `{ column, equals? | one_of? | above? }`.
///
/// With a condition, it holds when the value equals `equals`, is one of
/// `one_of`, or is a number strictly above `above`. Without one, the column
/// must hold 0 or 1 (`true`/`false` also read) and the rule holds on 1.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct Rule {
    pub column: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<RuleValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<RuleValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
}

impl Rule {
    pub fn named(column: &str) -> Self {
        Self {
            column: column.to_string(),
            equals: None,
            one_of: None,
            above: None,
        }
    }

    /// True when the rule has a condition (else the column holds 0/1).
    pub fn has_condition(&self) -> bool {
        self.equals.is_some() || self.one_of.is_some() || self.above.is_some()
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Rule;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a column name, or a table with `column` and a condition")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Rule, E> {
                Ok(Rule::named(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<Rule, A::Error> {
                Rule::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        Rule::serialize(self, s)
    }
}

fn one() -> f64 {
    1.0
}

/// A `[[tasks]]` entry: a named task, its label and the rows it covers.
///
/// A binary label comes from a rule (`equals`, `one_of`, `above`), or, with
/// no rule, from a 0/1 column; a regression label is a numeric column (no
/// rule). A row is in the task's sample space (mask 1) when `mask` holds (no
/// mask: every row) and its label value is not missing. `weight` scales the
/// task's loss (read by the trainer, not by the data crate).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    pub kind: TaskKind,
    pub label: Rule,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<Rule>,
    #[serde(default = "one")]
    pub weight: f64,
}

impl TaskSpec {
    /// A task name becomes part of graph node ids (`tower-<task>`) and so of
    /// parameter names: it may hold only what a node id may, ASCII letters,
    /// digits, `_` and `-`, and must not be empty.
    pub fn check_name(&self) -> Result<()> {
        let name = &self.name;
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Ok(());
        }
        let suggestion: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
            .collect();
        Err(DataError::TaskName {
            name: name.clone(),
            suggestion: if suggestion.is_empty() {
                "task_1".into()
            } else {
                suggestion
            },
        })
    }
}

fn schema_err(message: impl Into<String>) -> DataError {
    DataError::schema(message)
}

fn check_rule(rule: &Rule, what: &str) -> Result<()> {
    if rule.column.is_empty() {
        return Err(schema_err(format!("{what}: `column` is empty")));
    }
    let n = usize::from(rule.equals.is_some()) + usize::from(rule.one_of.is_some()) + usize::from(rule.above.is_some());
    if n > 1 {
        return Err(schema_err(format!(
            "{what} on column `{}`: give at most one of `equals`, `one_of`, `above`",
            rule.column
        )));
    }
    if rule.one_of.as_ref().is_some_and(Vec::is_empty) {
        return Err(schema_err(format!(
            "{what} on column `{}`: `one_of` is empty",
            rule.column
        )));
    }
    if rule.above.is_some_and(|a| !a.is_finite()) {
        return Err(schema_err(format!(
            "{what} on column `{}`: `above` must be finite",
            rule.column
        )));
    }
    Ok(())
}

impl TabularSchema {
    /// The files to read: `path`, or `train`/`valid`/`test`, each joined onto
    /// the data root when relative. The root is `dir` (joined onto `base`
    /// when relative), else `base`, else the working directory.
    pub fn resolve(&self, base: Option<&Path>) -> Result<DataFiles> {
        let root: Option<PathBuf> = match (&self.dir, base) {
            (Some(d), Some(b)) if d.is_relative() => Some(b.join(d)),
            (Some(d), _) => Some(d.clone()),
            (None, b) => b.map(Path::to_path_buf),
        };
        let full = |p: &PathBuf| match &root {
            Some(r) if p.is_relative() => r.join(p),
            _ => p.clone(),
        };
        match (&self.path, &self.train, &self.valid, &self.test) {
            (Some(p), None, None, None) => Ok(DataFiles::Single { path: full(p) }),
            (None, Some(a), Some(b), Some(c)) => Ok(DataFiles::Separate {
                train: full(a),
                valid: full(b),
                test: full(c),
            }),
            (Some(_), ..) => Err(schema_err(
                "give either `path` (one file, split by rows) or `train`, `valid` and `test`, not both",
            )),
            (None, None, None, None) => Err(schema_err(
                "no data files: give `path` (one file, split by rows) or `train`, `valid` and `test`",
            )),
            (None, ..) => {
                let missing: Vec<&str> = [("train", &self.train), ("valid", &self.valid), ("test", &self.test)]
                    .iter()
                    .filter(|(_, p)| p.is_none())
                    .map(|(n, _)| *n)
                    .collect();
                Err(schema_err(format!(
                    "`train`, `valid` and `test` go together: {} missing",
                    missing.join(", ")
                )))
            }
        }
    }

    /// The embedding width of a sparse field.
    pub fn dim_of(&self, f: &SparseField) -> usize {
        f.dim.unwrap_or(self.defaults.embedding_dim)
    }

    /// Checks the description and the tasks against each other before any
    /// file is read: names non-empty and unique, settings in range,
    /// `share_with` naming a sparse field, no task label that is also an
    /// input (that would leak the label), at least one sparse or dense input
    /// and one task.
    pub fn check(&self, tasks: &[TaskSpec]) -> Result<()> {
        let d = &self.defaults;
        if d.embedding_dim == 0 {
            return Err(schema_err("`defaults.embedding_dim` must be at least 1"));
        }
        if d.min_count == 0 {
            return Err(schema_err("`defaults.min_count` must be at least 1"));
        }
        if !self.header && self.columns.is_none() {
            return Err(schema_err(
                "`header = false` needs `columns`, the names of the file's columns in order",
            ));
        }
        if let Some(cols) = &self.columns {
            let mut seen = HashSet::new();
            for c in cols {
                if c.is_empty() {
                    return Err(schema_err("`columns` has an empty name"));
                }
                if !seen.insert(c.as_str()) {
                    return Err(schema_err(format!("`columns` lists `{c}` twice")));
                }
            }
        }
        if self.sparse.is_empty() && self.dense.is_empty() {
            return Err(schema_err("no inputs: give at least one `sparse` or `dense` column"));
        }

        // Input names are unique across kinds: they name model features.
        fn add<'a>(inputs: &mut HashMap<&'a str, &'static str>, name: &'a str, kind: &'static str) -> Result<()> {
            if name.is_empty() {
                return Err(schema_err(format!("a `{kind}` entry has an empty name")));
            }
            if let Some(prev) = inputs.insert(name, kind) {
                return Err(schema_err(format!(
                    "column `{name}` is listed twice (in `{prev}` and `{kind}`)"
                )));
            }
            Ok(())
        }
        let mut inputs: HashMap<&str, &'static str> = HashMap::new();
        for f in &self.sparse {
            add(&mut inputs, &f.name, "sparse")?;
        }
        for f in &self.dense {
            add(&mut inputs, &f.name, "dense")?;
        }
        for f in &self.sequence {
            add(&mut inputs, &f.name, "sequence")?;
        }
        if let Some(c) = &self.domain {
            // The domain column may also be a sparse feature (SAR-Net's
            // scenario field, PEPNet's domain-side features): one column,
            // read twice. As a dense or sequence column it would be a mistake.
            if !self.sparse.iter().any(|f| &f.name == c) {
                add(&mut inputs, c, "domain")?;
            }
        }

        for f in &self.sparse {
            check_categorical(&f.name, "sparse", f.dim, f.min_count, f.hash_buckets)?;
        }
        for f in &self.dense {
            if f.fill.is_some_and(|v| !v.is_finite()) {
                return Err(schema_err(format!(
                    "dense `{}`: `fill` must be a finite number",
                    f.name
                )));
            }
            let scaling = f.scaling.unwrap_or(self.defaults.scaling);
            if let (Scaling::Log, Some(v)) = (scaling, f.fill.filter(|v| *v < 0.0)) {
                return Err(schema_err(format!(
                    "dense `{}`: `fill` = {v} is negative, and `scaling = \"log\"` is ln(1 + x), for x >= 0: \
                     use a fill >= 0, or `scaling = \"signed-log\"` (sign(x) * ln(1 + |x|))",
                    f.name
                )));
            }
        }
        for f in &self.sequence {
            let name = &f.name;
            if f.max_len == 0 {
                return Err(schema_err(format!("sequence `{name}`: `max_len` must be at least 1")));
            }
            if f.separator.is_empty() {
                return Err(schema_err(format!("sequence `{name}`: `separator` is empty")));
            }
            match &f.share_with {
                Some(other) => {
                    if !self.sparse.iter().any(|s| &s.name == other) {
                        let known: Vec<&str> = self.sparse.iter().map(|s| s.name.as_str()).collect();
                        return Err(schema_err(format!(
                            "sequence `{name}`: `share_with = \"{other}\"` names no sparse field (sparse: {})",
                            known.join(", ")
                        )));
                    }
                    if f.dim.is_some() || f.min_count.is_some() || f.hash_buckets.is_some() {
                        return Err(schema_err(format!(
                            "sequence `{name}` shares `{other}`'s vocabulary and embeddings: drop its `dim`, `min_count` and `hash_buckets`"
                        )));
                    }
                }
                None => check_categorical(name, "sequence", f.dim, f.min_count, f.hash_buckets)?,
            }
        }
        for c in &self.ignore {
            if let Some(kind) = inputs.get(c.as_str()) {
                return Err(schema_err(format!("column `{c}` is both in `ignore` and in `{kind}`")));
            }
        }
        // Read besides any input role they also have; never ignored.
        for (key, column) in [("group", &self.group), ("weight", &self.weight)] {
            let Some(c) = column else { continue };
            if c.is_empty() {
                return Err(schema_err(format!("`{key}` is an empty column name")));
            }
            if self.ignore.contains(c) {
                return Err(schema_err(format!(
                    "column `{c}` is the `{key}` column and also in `ignore`: remove it from `ignore`"
                )));
            }
        }

        if tasks.is_empty() {
            return Err(schema_err("no tasks: give at least one [[tasks]] entry"));
        }
        let mut names = HashSet::new();
        for t in tasks {
            t.check_name()?;
            if !names.insert(t.name.as_str()) {
                return Err(schema_err(format!("task `{}` is given twice", t.name)));
            }
            if !(t.weight.is_finite() && t.weight >= 0.0) {
                return Err(schema_err(format!(
                    "task `{}`: `weight` = {} must be a finite number >= 0",
                    t.name, t.weight
                )));
            }
            check_rule(&t.label, &format!("task `{}` label", t.name))?;
            if let Some(m) = &t.mask {
                check_rule(m, &format!("task `{}` mask", t.name))?;
            }
            if t.kind == TaskKind::Regression && t.label.has_condition() {
                return Err(schema_err(format!(
                    "task `{}` is a regression: its label is the column's number, drop `equals`/`one_of`/`above`",
                    t.name
                )));
            }
            let col = &t.label.column;
            if let Some(kind) = inputs.get(col.as_str()) {
                return Err(schema_err(format!(
                    "column `{col}` is task `{}`'s label and also an input (`{kind}`): remove it from the inputs",
                    t.name
                )));
            }
            if self.ignore.contains(col) {
                return Err(schema_err(format!(
                    "column `{col}` is task `{}`'s label and also in `ignore`",
                    t.name
                )));
            }
        }
        Ok(())
    }
}

fn check_categorical(
    name: &str,
    kind: &str,
    dim: Option<usize>,
    min_count: Option<u64>,
    buckets: Option<u32>,
) -> Result<()> {
    if dim == Some(0) {
        return Err(schema_err(format!("{kind} `{name}`: `dim` must be at least 1")));
    }
    if min_count == Some(0) {
        return Err(schema_err(format!("{kind} `{name}`: `min_count` must be at least 1")));
    }
    if buckets == Some(0) {
        return Err(schema_err(format!(
            "{kind} `{name}`: `hash_buckets` must be at least 1"
        )));
    }
    if buckets.is_some() && min_count.is_some() {
        return Err(schema_err(format!(
            "{kind} `{name}`: `min_count` (vocabulary) and `hash_buckets` (hashing) exclude each other"
        )));
    }
    Ok(())
}

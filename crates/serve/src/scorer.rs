//! A loaded model, shared read-only by every request: JSON instances in,
//! encoded rows through the run's fitted preprocessing, per-task outputs out.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use mtrec_core::{Model, TaskKind};
use mtrec_data::encode_row::{ColumnKind, InputColumn, StringRecord};
use mtrec_data::{DataError, Dataset, Place, Preprocessor};
use serde_json::{json, Map, Value};

use crate::error::{Result, ServeError};

/// What a run folder gives a scorer (the runner loads it: `load_trained`).
pub struct ModelParts {
    /// The model; for the single-task baseline one one-task model per task
    /// (task order), whose outputs are joined column by column.
    pub models: Vec<Model>,
    pub preprocessor: Preprocessor,
    /// The architecture's name, for the metadata.
    pub arch: String,
}

/// One served model: the model, its preprocessing and what a request's
/// instance may hold. `Send + Sync`: handlers encode on their own threads
/// and the batching workers score through a shared reference.
pub struct Scorer {
    name: String,
    models: Vec<Model>,
    pre: Preprocessor,
    columns: Vec<InputColumn>,
    /// Column name -> index in `columns`.
    index: HashMap<String, usize>,
    /// Columns a training row held that do not reach the model (labels,
    /// masks, ignored): accepted and not read.
    passive: HashSet<String>,
    /// Sequence separators by column index (arrays are joined with them).
    separators: HashMap<usize, String>,
    /// The text a JSON `null` stands for: the first `missing` marker.
    missing: Option<String>,
    metadata: Value,
    /// Each task's name as a JSON string and a colon, for the answers.
    task_keys: Vec<String>,
}

/// The name data errors give the rows of a request (never shown: the
/// answer names the instance and column instead).
const REQUEST_SOURCE: &str = "request";

impl Scorer {
    pub fn new(name: &str, parts: ModelParts) -> Result<Self> {
        let ModelParts {
            models,
            preprocessor: pre,
            arch,
        } = parts;
        let columns = pre.input_columns();
        let index = columns.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect();
        let separators = columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let q = pre.sequences.iter().find(|q| q.name == c.name)?;
                (c.kind == ColumnKind::Sequence).then(|| (i, q.separator.clone()))
            })
            .collect();
        if models.is_empty() {
            return Err(ServeError::Usage("a run folder gave no model".into()));
        }
        let metadata = metadata(name, &arch, &models, &pre, &columns);
        let task_keys = models
            .iter()
            .flat_map(|m| m.tasks())
            .map(|t| format!("{}:", Value::String(t.name.clone())))
            .collect();
        Ok(Self {
            name: name.to_string(),
            passive: pre.passive_columns().into_iter().collect(),
            missing: pre.read.missing.first().cloned(),
            models,
            pre,
            columns,
            index,
            separators,
            metadata,
            task_keys,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `GET /v1/models/NAME`: status and metadata.
    pub fn metadata(&self) -> &Value {
        &self.metadata
    }

    /// The served model(s): several for a single-task run (one per task).
    pub fn models(&self) -> &[Model] {
        &self.models
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.pre
    }

    /// The instances of a request as encoded rows; a bad instance is a 400
    /// naming its index and the column.
    pub fn encode(&self, instances: &[Value]) -> Result<Dataset> {
        let mut records = Vec::with_capacity(instances.len());
        for (i, instance) in instances.iter().enumerate() {
            records.push(self.record(i, instance)?);
        }
        self.pre
            .encode_records(Path::new(REQUEST_SOURCE), records)
            .map_err(|e| match e {
                DataError::Input {
                    place: Place::Row(row),
                    column,
                    message,
                    ..
                } => ServeError::bad_instance(row.saturating_sub(1) as usize, column.as_deref(), message),
                other => other.into(),
            })
    }

    /// Instance `i` as the text fields of a file row, in input-column order.
    fn record(&self, i: usize, instance: &Value) -> Result<StringRecord> {
        let Value::Object(map) = instance else {
            return Err(ServeError::bad_instance(
                i,
                None,
                format!(
                    "an instance must be an object of column -> value, not {}",
                    kind_of(instance)
                ),
            ));
        };
        let mut texts: Vec<Option<Cow<'_, str>>> = vec![None; self.columns.len()];
        for (key, value) in map {
            match self.index.get(key) {
                Some(&k) => texts[k] = Some(self.text(i, k, value)?),
                None if self.passive.contains(key) || self.pre.ignore_rest => {}
                None => {
                    return Err(ServeError::bad_instance(
                        i,
                        Some(key),
                        format!("unknown column; the model reads {}", self.column_list()),
                    ))
                }
            }
        }
        let mut record = StringRecord::with_capacity(64 * texts.len(), texts.len());
        for (c, text) in self.columns.iter().zip(&texts) {
            match text {
                Some(t) => record.push_field(t),
                None => {
                    return Err(ServeError::bad_instance(
                        i,
                        Some(&c.name),
                        format!(
                            "missing column ({} input); give null for a missing value",
                            kind_name(c.kind)
                        ),
                    ))
                }
            }
        }
        Ok(record)
    }

    /// A JSON value as the text a training file would hold.
    fn text<'v>(&self, i: usize, k: usize, value: &'v Value) -> Result<Cow<'v, str>> {
        let column = &self.columns[k];
        let bad = |m: String| ServeError::bad_instance(i, Some(&column.name), m);
        match value {
            Value::String(s) => Ok(Cow::Borrowed(s)),
            // Display gives the shortest text that parses back to the same
            // f64 (serde_json parses with float_roundtrip): the file's value.
            Value::Number(n) => Ok(Cow::Owned(n.to_string())),
            Value::Bool(b) => Ok(Cow::Borrowed(if *b { "true" } else { "false" })),
            Value::Null => self.missing.clone().map(Cow::Owned).ok_or_else(|| {
                bad("null (a missing value) cannot be given: this model's data has no missing markers".into())
            }),
            Value::Array(items) => {
                let Some(sep) = self.separators.get(&k) else {
                    return Err(bad(format!(
                        "a list is accepted only for a sequence column; this is a {} input",
                        kind_name(column.kind)
                    )));
                };
                let mut tokens = Vec::with_capacity(items.len());
                for (j, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => tokens.push(s.clone()),
                        Value::Number(n) => tokens.push(n.to_string()),
                        other => {
                            return Err(bad(format!(
                                "sequence item {j} is {}; items must be strings or numbers",
                                kind_of(other)
                            )))
                        }
                    }
                }
                Ok(Cow::Owned(tokens.join(sep)))
            }
            Value::Object(_) => Err(bad("an object is not a value; give a string or a number".into())),
        }
    }

    fn column_list(&self) -> String {
        let names: Vec<String> = self.columns.iter().map(|c| format!("`{}`", c.name)).collect();
        names.join(", ")
    }

    /// The model on encoded rows: per task (task order) one output per row,
    /// the probability for binary tasks, the prediction for regression ones
    /// (as `mtrec predict` writes them).
    pub fn score(&self, data: &Dataset) -> Result<Vec<Vec<f32>>> {
        let mut columns = Vec::new();
        for model in &self.models {
            let batch = data.to_batch(model.device())?;
            let out = model.forward(&batch.inputs, false)?;
            for (t, o) in model.tasks().iter().zip(&out.outputs) {
                let v = o.to_vec1::<f32>()?;
                columns.push(match t.kind {
                    TaskKind::Binary => v.into_iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect(),
                    TaskKind::Regression => v,
                });
            }
        }
        Ok(columns)
    }

    /// `{"predictions": [{"<task>": value, ...}, ...]}` for `outputs` (per
    /// task, one value per row, in request order).
    pub fn predictions_json(&self, outputs: &[Vec<f32>]) -> String {
        let rows = outputs.first().map_or(0, Vec::len);
        let mut s = String::with_capacity(16 + rows * self.task_keys.len() * 32);
        s.push_str("{\"predictions\":[");
        for r in 0..rows {
            if r > 0 {
                s.push(',');
            }
            s.push('{');
            for (k, (key, o)) in self.task_keys.iter().zip(outputs).enumerate() {
                if k > 0 {
                    s.push(',');
                }
                s.push_str(key);
                let x = o.get(r).copied().unwrap_or(f32::NAN);
                // JSON has no NaN or infinity.
                if x.is_finite() {
                    s.push_str(&x.to_string());
                } else {
                    s.push_str("null");
                }
            }
            s.push('}');
        }
        s.push_str("]}");
        s
    }
}

fn kind_name(kind: ColumnKind) -> &'static str {
    match kind {
        ColumnKind::Sparse => "sparse",
        ColumnKind::Dense => "dense",
        ColumnKind::Sequence => "sequence",
        ColumnKind::Domain => "domain",
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The model's status and metadata (TF-Serving's `model_version_status`
/// plus what a client needs to build instances).
fn metadata(name: &str, arch: &str, models: &[Model], pre: &Preprocessor, columns: &[InputColumn]) -> Value {
    let tasks: Vec<Value> = models
        .iter()
        .flat_map(|m| m.tasks())
        .map(|t| {
            let (kind, output) = match t.kind {
                TaskKind::Binary => ("binary", "probability"),
                TaskKind::Regression => ("regression", "value"),
            };
            json!({ "name": t.name, "kind": kind, "output": output })
        })
        .collect();
    let inputs: Vec<Value> = columns
        .iter()
        .map(|c| {
            let mut m = Map::new();
            m.insert("name".into(), json!(c.name));
            m.insert("kind".into(), json!(kind_name(c.kind)));
            if let Some(q) = pre.sequences.iter().find(|q| q.name == c.name) {
                m.insert("separator".into(), json!(q.separator));
                m.insert("max_len".into(), json!(q.max_len));
            }
            Value::Object(m)
        })
        .collect();
    json!({
        "model_version_status": [{
            "version": "1",
            "state": "AVAILABLE",
            "status": { "error_code": "OK", "error_message": "" }
        }],
        "metadata": {
            "name": name,
            "architecture": arch,
            "parameters": models.iter().map(|m| m.params().parameter_count()).sum::<usize>(),
            "tasks": tasks,
            "inputs": inputs,
            "accepted_not_read": pre.passive_columns(),
            "missing": pre.read.missing,
            "domain": pre.domain.as_ref().map(|d| json!({ "column": d.column, "names": d.names })),
        }
    })
}

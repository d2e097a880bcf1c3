//! The fitted state saved as JSON (`preprocess.json`) and read back,
//! strictly (a format version, every field checked).

use std::path::Path;

use crate::error::{DataError, Place, Result};

use super::{Preprocessor, FORMAT_VERSION};

impl Preprocessor {
    /// The state as pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| DataError::schema(format!("cannot write the preprocessor: {e}")))
    }

    /// The state from JSON written by [`Preprocessor::to_json`].
    pub fn from_json(text: &str) -> Result<Self> {
        let pre: Preprocessor =
            serde_json::from_str(text).map_err(|e| DataError::schema(format!("cannot read a preprocessor: {e}")))?;
        if pre.version != FORMAT_VERSION {
            return Err(DataError::schema(format!(
                "preprocessor format version {} is not the supported {FORMAT_VERSION}",
                pre.version
            )));
        }
        for q in &pre.sequences {
            if pre.sequence_encoding(q).is_none() {
                return Err(DataError::schema(format!(
                    "sequence `{}` has no encoding and shares no sparse field",
                    q.name
                )));
            }
        }
        Ok(pre)
    }

    /// Writes the state to `path` as JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        Ok(mtrec_core::atomic::write_bytes(path, self.to_json()?.as_bytes())?)
    }

    /// Reads a state saved by [`Preprocessor::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            DataError::Schema(m) => DataError::input(path, Place::File, None, m),
            other => other,
        })
    }
}

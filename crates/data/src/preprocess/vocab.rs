//! Vocabularies of sparse fields and sequences, hashing, and how a value
//! becomes an id (`Encoding`).

use std::hash::Hasher;

use fnv::{FnvHashMap, FnvHasher};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Values kept for a field, in id order (`values[i]` has id `i + 1`), with
/// their training counts. Id 0 is out-of-vocabulary.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(try_from = "VocabFile", into = "VocabFile")]
pub struct Vocab {
    pub(super) min_count: u64,
    /// Training occurrences that map to 0: rarer values and missing ones.
    pub(super) oov_count: u64,
    pub(super) values: Vec<String>,
    pub(super) counts: Vec<u64>,
    /// FNV-hashed: short keys, no untrusted-input flooding concern here,
    /// and SipHash showed in profiles.
    pub(super) index: FnvHashMap<String, u32>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VocabFile {
    pub(super) min_count: u64,
    pub(super) oov_count: u64,
    pub(super) values: Vec<String>,
    pub(super) counts: Vec<u64>,
}

impl TryFrom<VocabFile> for Vocab {
    type Error = String;
    fn try_from(f: VocabFile) -> std::result::Result<Self, String> {
        if f.values.len() != f.counts.len() {
            return Err(format!(
                "vocabulary has {} values but {} counts",
                f.values.len(),
                f.counts.len()
            ));
        }
        if f.values.len() >= u32::MAX as usize {
            return Err("vocabulary too large for u32 ids".into());
        }
        let mut index = FnvHashMap::with_capacity_and_hasher(f.values.len(), Default::default());
        for (i, v) in f.values.iter().enumerate() {
            if index.insert(v.clone(), i as u32 + 1).is_some() {
                return Err(format!("vocabulary lists `{v}` twice"));
            }
        }
        Ok(Vocab {
            min_count: f.min_count,
            oov_count: f.oov_count,
            values: f.values,
            counts: f.counts,
            index,
        })
    }
}

impl From<Vocab> for VocabFile {
    fn from(v: Vocab) -> Self {
        VocabFile {
            min_count: v.min_count,
            oov_count: v.oov_count,
            values: v.values,
            counts: v.counts,
        }
    }
}

impl Vocab {
    /// Keeps the values counted at least `min_count` times, most frequent
    /// first (ties by value), so ids are deterministic.
    pub(super) fn fit(counts: FnvHashMap<String, u64>, missing: u64, min_count: u64) -> Result<Self> {
        let mut oov_count = missing;
        let mut kept: Vec<(String, u64)> = Vec::new();
        for (v, c) in counts {
            if c >= min_count {
                kept.push((v, c));
            } else {
                oov_count += c;
            }
        }
        kept.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let (values, counts): (Vec<String>, Vec<u64>) = kept.into_iter().unzip();
        Vocab::try_from(VocabFile {
            min_count,
            oov_count,
            values,
            counts,
        })
        .map_err(DataError::schema)
    }

    /// The id of `value`: `1..` when kept, else 0.
    pub fn id(&self, value: &str) -> u32 {
        self.index.get(value).copied().unwrap_or(0)
    }

    /// Number of ids, OOV included: `values().len() + 1`.
    pub fn size(&self) -> usize {
        self.values.len() + 1
    }

    /// Kept values in id order (`values()[i]` has id `i + 1`).
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Training count of each kept value, in id order.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    pub fn min_count(&self) -> u64 {
        self.min_count
    }

    /// Training occurrences mapped to 0 (rare and missing values).
    pub fn oov_count(&self) -> u64 {
        self.oov_count
    }
}

/// FNV-1a 64 of the value's UTF-8 bytes.
pub fn stable_hash(value: &str) -> u64 {
    let mut h = FnvHasher::default();
    h.write(value.as_bytes());
    h.finish()
}

/// How a categorical value becomes an id.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Encoding {
    /// Training values seen at least `min_count` times: ids `1..`; else 0.
    Vocab { vocab: Vocab },
    /// `1 + stable_hash(value) % buckets`; 0 only for a missing value.
    Hash { buckets: u32 },
}

impl Encoding {
    /// The id of a present (not missing) value.
    pub fn id(&self, value: &str) -> u32 {
        match self {
            Encoding::Vocab { vocab } => vocab.id(value),
            Encoding::Hash { buckets } => 1 + (stable_hash(value) % u64::from(*buckets)) as u32,
        }
    }

    /// Number of ids, 0 included.
    pub fn size(&self) -> usize {
        match self {
            Encoding::Vocab { vocab } => vocab.size(),
            Encoding::Hash { buckets } => *buckets as usize + 1,
        }
    }
}

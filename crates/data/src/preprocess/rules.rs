//! Task label and mask rules (`equals`, `one_of`, `above`...) compiled once
//! and applied to a row's text fields.

use crate::schema::Rule;

use super::Preprocessor;

/// A task's rule, ready to apply.
pub(super) enum Cond {
    /// The value must be 0 or 1.
    Flag,
    Equals(String, Option<f64>),
    OneOf(Vec<(String, Option<f64>)>),
    Above(f64),
}

pub(super) fn as_number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|x| x.is_finite())
}

impl Cond {
    pub(super) fn of(rule: &Rule) -> Cond {
        if let Some(v) = &rule.equals {
            Cond::Equals(v.0.clone(), as_number(&v.0))
        } else if let Some(vs) = &rule.one_of {
            Cond::OneOf(vs.iter().map(|v| (v.0.clone(), as_number(&v.0))).collect())
        } else if let Some(a) = rule.above {
            Cond::Above(a)
        } else {
            Cond::Flag
        }
    }

    pub(super) fn matches(expected: &(String, Option<f64>), value: &str) -> bool {
        expected.0 == value || matches!((expected.1, as_number(value)), (Some(a), Some(b)) if a == b)
    }

    /// Whether the rule holds for a present value; an error message when
    /// the value cannot be judged.
    pub(super) fn holds(&self, value: &str) -> std::result::Result<bool, String> {
        match self {
            Cond::Flag => match value.trim() {
                "true" => Ok(true),
                "false" => Ok(false),
                v => match as_number(v) {
                    Some(1.0) => Ok(true),
                    Some(0.0) => Ok(false),
                    _ => Err(format!(
                        "`{value}` is not 0 or 1 (with no rule the column must hold 0/1; give the rule \
                         `equals`, `one_of` or `above` to derive it)"
                    )),
                },
            },
            Cond::Equals(s, n) => Ok(Cond::matches(&(s.clone(), *n), value)),
            Cond::OneOf(list) => Ok(list.iter().any(|e| Cond::matches(e, value))),
            Cond::Above(a) => match parse_number(value) {
                Ok(x) => Ok(x > *a),
                Err(m) => Err(m),
            },
        }
    }
}

/// A number, or an error message naming the text.
pub(super) fn parse_number(value: &str) -> std::result::Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        Ok(x) if x.is_nan() => Err(format!("`{value}` is not a number")),
        Ok(_) => Err(format!("`{value}` is not a finite number")),
        Err(_) => Err(format!("cannot read `{value}` as a number")),
    }
}

impl Preprocessor {
    pub(super) fn conditions(&self) -> Vec<(Cond, Option<Cond>)> {
        self.tasks
            .iter()
            .map(|t| (Cond::of(&t.label), t.mask.as_ref().map(Cond::of)))
            .collect()
    }
}

//! How every configuration of session-proxy is checked: one error type that
//! names the config and the field, and one way to check a list of rules.

use std::borrow::Cow;

/// A configuration field that cannot work; nothing was started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{config}.{field}: {problem}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The config (`SessionConfig`, `RpcConfig`, `BackendConfig`, …).
    pub config: &'static str,
    /// The field, as named in the config.
    pub field: &'static str,
    /// What is wrong with its value.
    pub problem: Cow<'static, str>,
}

impl ConfigError {
    /// Field `field` of `config` cannot work, because of `problem`.
    pub fn new(
        config: &'static str,
        field: &'static str,
        problem: impl Into<Cow<'static, str>>,
    ) -> Self {
        ConfigError {
            config,
            field,
            problem: problem.into(),
        }
    }
}

/// Checks `(field, ok, problem)` rules in order; the first that fails is
/// the error.
pub fn check(
    config: &'static str,
    rules: &[(&'static str, bool, &'static str)],
) -> Result<(), ConfigError> {
    match rules.iter().find(|(_, ok, _)| !ok) {
        Some(&(field, _, problem)) => Err(ConfigError::new(config, field, problem)),
        None => Ok(()),
    }
}

/// The problem of a duration or count that must not be zero.
pub const POSITIVE: &str = "must be more than zero";
/// The problem of a count that must be at least one.
pub const AT_LEAST_ONE: &str = "must be at least 1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_broken_rule_is_named_with_its_config() {
        let err = check("Demo", &[("a", true, POSITIVE), ("b", false, AT_LEAST_ONE)])
            .expect_err("b is broken");
        assert_eq!(err.to_string(), "Demo.b: must be at least 1");
        assert!(check("Demo", &[("a", true, POSITIVE)]).is_ok());
    }
}

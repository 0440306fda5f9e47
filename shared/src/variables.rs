//! Reading one configuration variable: a leaf every module that reads its own settings
//! (the configuration, the report sinks, the verification) shares.

use crate::error::{Error, Result};

/// `true`/`1`/`yes` or `false`/`0`/`no` (any case); `default` when unset.
pub(crate) fn boolean(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: bool,
) -> Result<bool> {
    match get(var).map(|v| v.to_ascii_lowercase()).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(other) => Err(Error::Config {
            var,
            message: format!("\"{other}\" is not a boolean (use true or false)"),
        }),
    }
}

/// A number at or above `minimum`; `default` when unset.
pub(crate) fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
    minimum: T,
) -> Result<T> {
    let Some(raw) = get(var) else {
        return Ok(default);
    };
    match raw.parse::<T>() {
        Ok(v) if v >= minimum => Ok(v),
        Ok(_) => Err(Error::Config {
            var,
            message: format!("{raw} is below the minimum {minimum}"),
        }),
        Err(_) => Err(Error::Config {
            var,
            message: format!("\"{raw}\" is not a whole number"),
        }),
    }
}

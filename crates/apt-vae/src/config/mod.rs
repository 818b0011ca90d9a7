//! The two VAE configurations, spelled as diffusers' `config.json` spells them, with presets and
//! validation that names the key:
//!
//! - [`WanVaeConfig`] (`wan.rs`): the Wan 2.1 video VAE, diffusers' `AutoencoderKLWan`;
//! - [`ImageVaeConfig`] (`image.rs`): the SD3 / FLUX image VAE, diffusers' `AutoencoderKL`.
//!
//! This file holds what both share: parsing a diffusers `config.json` and the error helpers.

mod image;
mod wan;

pub use image::ImageVaeConfig;
pub use wan::WanVaeConfig;

use crate::error::{Result, VaeError};

/// A [`VaeError::Config`] naming `key`.
fn config_error(key: &str, message: impl Into<String>) -> VaeError {
    VaeError::Config {
        key: key.into(),
        message: message.into(),
    }
}

/// Fails, naming `key`, unless `value` is positive.
fn check_positive(key: &str, value: i64) -> Result<()> {
    if value <= 0 {
        Err(config_error(key, format!("must be positive (got {value})")))
    } else {
        Ok(())
    }
}

/// Parses a diffusers `config.json`: keys starting with `_` (`_class_name`,
/// `_diffusers_version`, …) are metadata and skipped; any other key the struct does not know is
/// an error naming it.
fn parse_diffusers_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| config_error("config.json", e.to_string()))?;
    let serde_json::Value::Object(map) = value else {
        return Err(config_error("config.json", "is not a JSON object"));
    };
    let map: serde_json::Map<String, serde_json::Value> = map
        .into_iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .collect();
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| config_error("config.json", e.to_string()))
}

/// The `_class_name` of a diffusers `config.json`, if any.
pub fn diffusers_class_name(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.get("_class_name")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_name_is_read_from_metadata() {
        let text = r#"{"_class_name": "AutoencoderKLWan", "_diffusers_version": "0.42.1"}"#;
        assert_eq!(
            diffusers_class_name(text).as_deref(),
            Some("AutoencoderKLWan")
        );
        assert_eq!(diffusers_class_name(r#"{"base_dim": 96}"#), None);
        assert_eq!(diffusers_class_name("not json"), None);
    }

    #[test]
    fn non_objects_are_named_as_config_json() {
        let err = parse_diffusers_json::<WanVaeConfig>("[1, 2]")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.json") && err.contains("not a JSON object"),
            "{err}"
        );
    }
}

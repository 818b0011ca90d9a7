//! `--set key=value` overrides, and keys of older configs that moved (each answered with what
//! to write now).

use crate::error::{config_error, Result};

/// Sets `key.path=value` in `table`: the value is parsed as TOML (`10`, `1e-4`, `"cuda"`,
/// `[1, 2]`, `{ kind = "constant" }`), falling back to a bare string (`device=cuda`).
/// Intermediate tables are created; whether the key exists is for deserialisation to say.
pub fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, value) = assignment
        .split_once('=')
        .ok_or_else(|| config_error(assignment, "--set takes key=value"))?;
    let (key, value) = (key.trim(), value.trim());
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(config_error(
            key,
            "is not a dotted key (e.g. pretrain.train.steps)",
        ));
    }
    let mut here = table;
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = here
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        here = entry.as_table_mut().ok_or_else(|| {
            config_error(
                &parts[..=i].join("."),
                "is a value, not a table: cannot set a key below it",
            )
        })?;
    }
    here.insert(parts[parts.len() - 1].to_string(), parsed);
    Ok(())
}

/// `[apt]` keys that moved into `[apt.train]` (old name, new name there).
const MOVED_APT_KEYS: [(&str, &str); 11] = [
    ("steps", "steps"),
    ("batch_size", "batch_size"),
    ("grad_accum", "grad_accum"),
    ("optimizer_g", "optimizer"),
    ("optimizer_d", "optimizer_d"),
    ("ema_decay", "ema_decay"),
    ("clip_grad", "clip_grad"),
    ("checkpoint_every", "checkpoint_every"),
    ("keep_checkpoints", "keep_checkpoints"),
    ("max_nonfinite", "max_nonfinite"),
    ("preview_every", "preview_every"),
];

/// Fails on the first key an older apt-rs accepted that now lives elsewhere, saying where.
pub fn reject_moved_keys(table: &toml::Table) -> Result<()> {
    if let Some(apt) = table.get("apt").and_then(toml::Value::as_table) {
        for (old, new) in MOVED_APT_KEYS {
            if apt.contains_key(old) {
                return Err(config_error(
                    &format!("apt.{old}"),
                    format!(
                        "has moved: write `{new} = …` under [apt.train] (the adversarial \
                         stage's loop takes the same keys as [pretrain.train], with `optimizer` \
                         for G and `optimizer_d` for D)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_toml_values_and_fall_back_to_strings() {
        let mut t: toml::Table = toml::from_str("[a]\nb = 1").unwrap();
        apply_override(&mut t, "a.b=2").unwrap();
        apply_override(&mut t, "a.c.d = [1, 2]").unwrap();
        apply_override(&mut t, "device=cuda:1").unwrap();
        apply_override(&mut t, "s=\"quoted\"").unwrap();
        apply_override(&mut t, "lr=1e-4").unwrap();
        assert_eq!(t["a"]["b"].as_integer(), Some(2));
        assert_eq!(t["a"]["c"]["d"].as_array().unwrap().len(), 2);
        assert_eq!(t["device"].as_str(), Some("cuda:1"));
        assert_eq!(t["s"].as_str(), Some("quoted"));
        assert_eq!(t["lr"].as_float(), Some(1e-4));
        let e = apply_override(&mut t, "a.b.c=1").unwrap_err().to_string();
        assert!(e.contains("`a.b`"), "{e}");
        assert!(apply_override(&mut t, "a..b=1").is_err());
        assert!(apply_override(&mut t, "novalue").is_err());
    }

    #[test]
    fn moved_apt_keys_say_where_they_went() {
        let t: toml::Table = toml::from_str("[apt]\noptimizer_g = { kind = \"adamw\" }").unwrap();
        let e = reject_moved_keys(&t).unwrap_err().to_string();
        assert!(
            e.contains("`apt.optimizer_g`") && e.contains("`optimizer = …` under [apt.train]"),
            "{e}"
        );
        let t: toml::Table = toml::from_str("[apt.train]\nsteps = 3").unwrap();
        reject_moved_keys(&t).unwrap();
    }
}

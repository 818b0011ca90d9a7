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

/// Keys an older apt-rs wrote that were renamed: (table, old name, new name). A config that
/// uses the old name loads as if it used the new one (with a warning).
const RENAMED_KEYS: [(&[&str], &str, &str); 2] = [
    (&["apt"], "sigma", "sigma_r1"),
    (&["apt", "image"], "sigma", "sigma_r1"),
];

/// Brings the keys of an older apt-rs up to date: renamed keys are renamed (each returned as
/// `(old, new)` full key names, for a warning), and the first key that moved elsewhere is an
/// error saying where it went. Writing both a key and its old name is an error.
pub fn upgrade_old_keys(table: &mut toml::Table) -> Result<Vec<(String, String)>> {
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
    let mut renamed = Vec::new();
    for (path, old, new) in RENAMED_KEYS {
        let Some(section) = table_at(table, path) else {
            continue;
        };
        let Some(value) = section.remove(old) else {
            continue;
        };
        let at = path.join(".");
        if section.contains_key(new) {
            return Err(config_error(
                &format!("{at}.{old}"),
                format!("is the old name of `{at}.{new}`, which is also given: keep only `{new}`"),
            ));
        }
        section.insert(new.to_string(), value);
        renamed.push((format!("{at}.{old}"), format!("{at}.{new}")));
    }
    Ok(renamed)
}

/// The table at `path` (`["apt", "image"]`), if every step is a table.
fn table_at<'a>(table: &'a mut toml::Table, path: &[&str]) -> Option<&'a mut toml::Table> {
    let mut here = table;
    for part in path {
        here = here.get_mut(*part)?.as_table_mut()?;
    }
    Some(here)
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
        let mut t: toml::Table =
            toml::from_str("[apt]\noptimizer_g = { kind = \"adamw\" }").unwrap();
        let e = upgrade_old_keys(&mut t).unwrap_err().to_string();
        assert!(
            e.contains("`apt.optimizer_g`") && e.contains("`optimizer = …` under [apt.train]"),
            "{e}"
        );
        let mut t: toml::Table = toml::from_str("[apt.train]\nsteps = 3").unwrap();
        assert!(upgrade_old_keys(&mut t).unwrap().is_empty());
    }

    #[test]
    fn renamed_keys_load_under_their_new_name() {
        let mut t: toml::Table =
            toml::from_str("[apt]\nsigma = 0.01\nimage = { steps = 3, sigma = 0.02 }").unwrap();
        let renamed = upgrade_old_keys(&mut t).unwrap();
        assert_eq!(
            renamed,
            [
                ("apt.sigma".to_string(), "apt.sigma_r1".to_string()),
                (
                    "apt.image.sigma".to_string(),
                    "apt.image.sigma_r1".to_string()
                )
            ]
        );
        assert_eq!(t["apt"]["sigma_r1"].as_float(), Some(0.01));
        assert_eq!(t["apt"]["image"]["sigma_r1"].as_float(), Some(0.02));
        assert!(t["apt"].get("sigma").is_none());
        let mut both: toml::Table = toml::from_str("[apt]\nsigma = 0.01\nsigma_r1 = 0.1").unwrap();
        let e = upgrade_old_keys(&mut both).unwrap_err().to_string();
        assert!(e.contains("`apt.sigma`") && e.contains("sigma_r1"), "{e}");
    }
}

//! Which keys differ between two run configs (for `--resume` and for a second `apt train` on an
//! existing run directory).

use std::collections::BTreeMap;

use super::RunConfig;

/// One key whose value differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The dotted key (`pretrain.train.optimizer.kind`).
    pub key: String,
    /// Its value in the first config (TOML), `None` when absent.
    pub before: Option<String>,
    /// Its value in the second config.
    pub after: Option<String>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
        write!(
            f,
            "`{}` was {}, now {}",
            self.key,
            show(&self.before),
            show(&self.after)
        )
    }
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn keys(cfg: &RunConfig) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let value = toml::Value::try_from(cfg).expect("a run config serialises");
    flatten("", &value, &mut out);
    out
}

/// Every key whose value differs between `before` and `after` (defaults filled in on both).
pub fn changed_keys(before: &RunConfig, after: &RunConfig) -> Vec<Change> {
    let (a, b) = (keys(before), keys(after));
    let mut all: Vec<&String> = a.keys().chain(b.keys()).collect();
    all.sort();
    all.dedup();
    all.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| Change {
            key: k.clone(),
            before: a.get(k).cloned(),
            after: b.get(k).cloned(),
        })
        .collect()
}

/// `config` with the values of `keys` (dotted, leaves) taken from `from` (a key absent there is
/// removed): e.g. the config of record keeping what an earlier run trained with.
pub fn with_values_of(config: &RunConfig, from: &RunConfig, keys: &[String]) -> RunConfig {
    let mut table = toml::Table::try_from(config).expect("a run config serialises");
    let source = toml::Table::try_from(from).expect("a run config serialises");
    for key in keys {
        let path: Vec<&str> = key.split('.').collect();
        let (last, parents) = path.split_last().expect("a key has a name");
        let value = parents
            .iter()
            .try_fold(&source, |t, p| t.get(*p)?.as_table())
            .and_then(|t| t.get(*last))
            .cloned();
        let mut here = &mut table;
        for p in parents {
            here = here
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .expect("the same layout on both sides");
        }
        match value {
            Some(v) => here.insert(last.to_string(), v),
            None => here.remove(*last),
        };
    }
    toml::Value::Table(table)
        .try_into()
        .expect("values of two valid configs combine into a valid config")
}

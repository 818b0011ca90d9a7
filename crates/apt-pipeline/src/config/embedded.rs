//! The method configs a section embeds. `[pretrain]`, `[consistency]` and `[apt]` hold the
//! fields of apt-flow's `FlowMatchingConfig` and `ConsistencyConfig` and apt-gan's
//! `AdversarialConfig` directly (`#[serde(flatten)]`), so that each default has one owner.
//! serde reads flattened fields from a buffer, which loses toml's key paths in its errors
//! ("expected i64 in `apt`"); [`check_embedded`] reads each embedded part on its own first, so
//! that an error names its full key ("… in `apt.translate`").

use std::collections::BTreeMap;

use apt_flow::distill::ConsistencyConfig;
use apt_flow::pretrain::FlowMatchingConfig;
use apt_gan::AdversarialConfig;
use serde::de::{self, Deserialize, Deserializer, Visitor};

use crate::error::{PipelineError, Result};

/// Reads the embedded method part of every section that has one (the rest of the section is
/// left to the run config's own deserialisation).
pub fn check_embedded(table: &toml::Table) -> Result<()> {
    check::<FlowMatchingConfig>(table, "pretrain")?;
    check::<ConsistencyConfig>(table, "consistency")?;
    check::<AdversarialConfig>(table, "apt")
}

/// `M`'s keys of `[section]`, deserialised as `M` under the section's name.
fn check<M: de::DeserializeOwned>(table: &toml::Table, section: &str) -> Result<()> {
    let Some(toml::Value::Table(body)) = table.get(section) else {
        return Ok(());
    };
    let fields = field_names::<M>();
    let own: toml::Table = body
        .iter()
        .filter(|(k, _)| fields.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if own.is_empty() {
        // Required fields are reported as missing by the section itself.
        return Ok(());
    }
    let mut doc = toml::Table::new();
    doc.insert(section.to_string(), toml::Value::Table(own));
    // A `toml::Value`'s errors end with the key path ("… in `apt.translate`").
    match toml::Value::Table(doc).try_into::<BTreeMap<String, Partial<M>>>() {
        Ok(_) => Ok(()),
        Err(e) => Err(PipelineError::File {
            path: Default::default(),
            reason: e.to_string().trim().replace('\n', " "),
        }),
    }
}

/// `M` read from a table that may lack its required fields: they are checked by the
/// section's own deserialisation, which names them.
struct Partial<M>(std::marker::PhantomData<M>);

impl<'de, M: Deserialize<'de>> Deserialize<'de> for Partial<M> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match M::deserialize(d) {
            Ok(_) => Ok(Self(std::marker::PhantomData)),
            Err(e) if e.to_string().starts_with("missing field") => {
                Ok(Self(std::marker::PhantomData))
            }
            Err(e) => Err(e),
        }
    }
}

/// The field names a struct deserialises (what its derive passes to `deserialize_struct`).
pub fn field_names<'de, M: Deserialize<'de>>() -> &'static [&'static str] {
    #[derive(Debug)]
    struct Found(Option<&'static [&'static str]>);
    impl std::fmt::Display for Found {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field names")
        }
    }
    impl std::error::Error for Found {}
    impl de::Error for Found {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Found(None)
        }
    }
    struct Introspect;
    impl<'de> Deserializer<'de> for Introspect {
        type Error = Found;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Found> {
            Err(Found(None))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> std::result::Result<V::Value, Found> {
            Err(Found(Some(fields)))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    match M::deserialize(Introspect) {
        Err(Found(Some(fields))) => fields,
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        check_embedded(&toml::from_str(text).unwrap())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_embedded_configs_list_their_fields() {
        let apt = field_names::<AdversarialConfig>();
        for key in ["lambda_r1", "sigma_r1", "translate", "noised_inputs"] {
            assert!(apt.contains(&key), "{apt:?}");
        }
        assert!(field_names::<FlowMatchingConfig>().contains(&"p_uncond"));
        assert!(field_names::<ConsistencyConfig>().contains(&"cfg_scale"));
    }

    #[test]
    fn errors_in_an_embedded_part_name_the_full_key() {
        let e = error("[apt]\ntranslate = \"x\"\neval = 3");
        assert!(
            e.contains("`apt.translate`") && e.contains("expected i64"),
            "{e}"
        );
        let e = error("[apt]\nloss = \"wasserstein\"");
        assert!(
            e.contains("`apt.loss`") && e.contains("non-saturating"),
            "{e}"
        );
        let e = error("[pretrain]\np_uncond = \"often\"");
        assert!(e.contains("`pretrain.p_uncond`"), "{e}");
        // A missing required field is left to the section (which names it).
        check_embedded(&toml::from_str("[consistency]\npoints = 4").unwrap()).unwrap();
        let e = error("[consistency]\npoints = -4");
        assert!(e.contains("`consistency.points`"), "{e}");
        check_embedded(&toml::from_str("[apt]\nsigma_r1 = 0.1\n[apt.train]\nsteps = 1").unwrap())
            .unwrap();
    }
}

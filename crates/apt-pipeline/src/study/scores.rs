//! Scores of a study's models kept between evaluations (`<out>/scores/<row>.json`): a study
//! is evaluated again each time runs finish, and scoring a model (512 clips, the teacher's 50
//! network evaluations a clip) dominates that. A cached score is reused only when everything it
//! depends on is unchanged: the weights (size and hash of the export), the sampler or step
//! count, the prompts, seed and batch of the noise, the data and text config, and the scoring
//! code's version.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::error::Result;
use crate::eval::alignment::{ClipScore, RealScore, ScoredClips};
use crate::run_dir::{export_record, write_json};

/// Bumped whenever the estimator or the features change what a clip scores.
const SCORES_VERSION: u32 = 1;

/// What a score depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreKey {
    version: u32,
    weights_bytes: u64,
    weights_fnv64: String,
    /// `steps` of a few-step generator, or the teacher's sampler (JSON).
    generation: String,
    prompts: usize,
    seed: u64,
    batch: usize,
    /// The run's `[data]` and `[text]` (JSON).
    context: String,
}

impl ScoreKey {
    /// The key of `weights` generated as `generation` on `prompts` prompts of `run`'s report
    /// seed in batches of `batch`; `None` when the export has no integrity record.
    pub fn new(
        run: &RunConfig,
        weights: &Path,
        generation: String,
        prompts: usize,
        batch: usize,
    ) -> Result<Option<Self>> {
        let Some(record) = export_record(weights)? else {
            return Ok(None);
        };
        let context = serde_json::to_string(&(&run.data, &run.text)).unwrap_or_default();
        Ok(Some(Self {
            version: SCORES_VERSION,
            weights_bytes: record.weights_bytes,
            weights_fnv64: record.weights_fnv64,
            generation,
            prompts,
            seed: run.report.seed,
            batch,
            context,
        }))
    }
}

#[derive(Serialize, Deserialize)]
struct Cached {
    key: ScoreKey,
    clips: Vec<ClipScore>,
    real: Vec<RealScore>,
    seconds_per_clip: f64,
}

/// `<out>/scores/<row name, spaces and slashes as dashes>.json`.
pub fn score_path(out: &Path, row: &str) -> PathBuf {
    let name: String = row
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    out.join("scores").join(format!("{name}.json"))
}

/// The cached scores at `path` when their key is `key`, else `score()` (then cached).
pub fn cached_or_scored(
    path: &Path,
    key: Option<ScoreKey>,
    score: impl FnOnce() -> Result<ScoredClips>,
) -> Result<ScoredClips> {
    let Some(key) = key else {
        return score();
    };
    let cached = std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Cached>(&bytes).ok());
    if let Some(c) = cached.filter(|c| c.key == key) {
        return Ok(ScoredClips {
            clips: c.clips,
            real: c.real,
            seconds_per_clip: c.seconds_per_clip,
        });
    }
    let scored = score()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(crate::error::io_error(dir))?;
    }
    write_json(
        path,
        &Cached {
            key,
            clips: scored.clips.clone(),
            real: scored.real.clone(),
            seconds_per_clip: scored.seconds_per_clip,
        },
    )?;
    Ok(scored)
}

//! What the pipeline tests share: the tiny model and moving shapes every test run trains on,
//! the quick teacher and student the adversarial tests start from, and a follower that stops a
//! run after a given update (as Ctrl-C would).

#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use apt_flow::train::MetricLine;
use apt_pipeline::stages::Progress;
use apt_pipeline::Stage;

/// A 2-block MMDiT (2 heads of 16, patch 1×4×4, RoPE) on MiniLM's 384-wide text.
pub const TINY_MODEL: &str = r#"
[model.config]
in_channels = 3
out_channels = 3
patch_size = [1, 4, 4]
depth = 2
num_heads = 2
head_dim = 16
context_dim = 384
pooled_dim = 384
qk_norm = true
[model.config.positions]
kind = "rope3d"
"#;

/// Moving shapes of 2 frames of 16×16.
pub const TINY_SHAPES: &str = r#"
[data]
kind = "shapes"
[data.shapes]
frames = 2
height = 16
width = 16
"#;

/// A 3-update teacher and a 2-update one-step student on 4 teacher pairs.
pub const QUICK_TEACHER_AND_STUDENT: &str = r#"
[pretrain]
val_clips = 0
[pretrain.train]
steps = 3
batch_size = 2
optimizer = { kind = "adamw", lr = 1e-3 }

[distill]
pairs = 4
teacher = { steps = 2, method = "euler", shift = 1.0, cfg_scale = 2.0 }
[distill.train]
steps = 2
batch_size = 2
optimizer = { kind = "adamw", lr = 1e-4 }
"#;

/// The top of a test run's config: its directory, seed, one thread, 12 text tokens (cached in
/// `cache` when given), the tiny model and shapes. Stage sections follow.
pub fn tiny_run(out: &str, seed: u64, cache: Option<&Path>) -> String {
    let cache = cache
        .map(|c| format!("cache = \"{}\"\n", c.display()))
        .unwrap_or_default();
    format!(
        "out = \"{out}\"\nseed = {seed}\nthreads = 1\n{TINY_MODEL}{TINY_SHAPES}\n[text]\n\
         tokens = 12\n{cache}"
    )
}

/// Raises the stop flag after update `at` (as Ctrl-C would).
pub struct StopAt {
    pub at: u64,
    pub stop: Arc<AtomicBool>,
}

impl Progress for StopAt {
    fn update(&mut self, _stage: Stage, line: &MetricLine) {
        if line.step == self.at {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
}

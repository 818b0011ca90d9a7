//! **Moving shapes**: the built-in captioned video benchmark.
//!
//! Each clip shows one or more anti-aliased shapes (circle, square, triangle) of distinct
//! colours moving in a straight line in one of eight directions at a given speed over a plain
//! background, with a caption such as "a red circle moves left". Sample `i` of a data set
//! with seed `s` is a pure function of `(s, i)` and the config, at any `T × H × W`. Ground-truth
//! attributes (including the centre in every frame) come with each clip. Attribute
//! combinations can be held out (e.g. never a yellow triangle) for generalisation tests.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{DataError, Result};

mod export;
mod vocabulary;

pub use export::{write_folder, ExportedClip};
pub use vocabulary::{Colour, Direction, Shape};

/// Everything about one shape in one clip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapeAttributes {
    /// Outline.
    pub shape: Shape,
    /// Fill colour.
    pub colour: Colour,
    /// Direction of motion.
    pub direction: Direction,
    /// Pixels per frame.
    pub speed: f64,
    /// Size `r` in pixels (radius, half-side or circumradius).
    pub size: f64,
    /// Centre `(x, y)` in pixels in every frame.
    pub centres: Vec<(f64, f64)>,
}

/// The moving-shapes data set description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapesConfig {
    /// Frames per clip.
    pub frames: usize,
    /// Frame height in pixels.
    pub height: u32,
    /// Frame width in pixels.
    pub width: u32,
    /// Shapes per clip are drawn uniformly from `1..=max_shapes` (distinct colours).
    #[serde(default = "default_max_shapes")]
    pub max_shapes: usize,
    /// Shape size `r` as a fraction of the shorter side, drawn uniformly from this range.
    #[serde(default = "default_size")]
    pub size: [f64; 2],
    /// Speeds in pixels per frame, one drawn per shape; with two or more, captions say
    /// "slowly" for the slowest and "quickly" for the fastest.
    #[serde(default = "default_speeds")]
    pub speeds: Vec<f64>,
    /// Background RGB in [0, 1].
    #[serde(default = "default_background")]
    pub background: [f64; 3],
    /// `(colour, shape)` pairs never drawn by [`Split::Train`] and always by [`Split::HeldOut`].
    #[serde(default)]
    pub held_out: Vec<(Colour, Shape)>,
}

fn default_max_shapes() -> usize {
    1
}
fn default_size() -> [f64; 2] {
    [0.12, 0.18]
}
fn default_speeds() -> Vec<f64> {
    vec![1.0]
}
fn default_background() -> [f64; 3] {
    [0.12, 0.12, 0.12]
}

/// Which part of the data set to draw from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// Every combination except the held-out ones.
    Train,
    /// Only clips whose first shape is a held-out combination.
    HeldOut,
    /// Everything.
    All,
}

/// One rendered clip.
#[derive(Debug)]
pub struct ShapesSample {
    /// `[3, T, H, W]` float32 RGB in [-1, 1].
    pub video: Tensor,
    /// Caption, e.g. "a red circle moves left".
    pub caption: String,
    /// Ground truth, one entry per shape (in caption order).
    pub shapes: Vec<ShapeAttributes>,
}

impl ShapesConfig {
    /// A config of `frames × height × width` clips with one shape and the defaults.
    pub fn new(frames: usize, height: u32, width: u32) -> Self {
        Self {
            frames,
            height,
            width,
            max_shapes: 1,
            size: default_size(),
            speeds: default_speeds(),
            background: default_background(),
            held_out: vec![],
        }
    }

    /// Checks that every value is usable, including that the fastest, largest shape can
    /// cross the frame diagonally without leaving it.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &'static str, reason: String| Err(DataError::Option { key, reason });
        if self.frames == 0 || self.height < 8 || self.width < 8 {
            return bad(
                "frames/height/width",
                "need at least 1 frame of 8×8 pixels".into(),
            );
        }
        if self.max_shapes == 0 || self.max_shapes > Colour::ALL.len() {
            return bad(
                "max_shapes",
                format!("must be in 1..={}", Colour::ALL.len()),
            );
        }
        if !(0.0 < self.size[0] && self.size[0] <= self.size[1] && self.size[1] < 0.5) {
            return bad(
                "size",
                format!("must be 0 < min ≤ max < 0.5, got {:?}", self.size),
            );
        }
        if self.speeds.is_empty() || self.speeds.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
            return bad("speeds", "must be one or more non-negative numbers".into());
        }
        if self.background.iter().any(|c| !(0.0..=1.0).contains(c)) {
            return bad("background", "must be RGB in [0, 1]".into());
        }
        let short = self.height.min(self.width) as f64;
        let max_speed = self.speeds.iter().cloned().fold(0.0, f64::max);
        let travel = max_speed * (self.frames - 1) as f64;
        if travel + 2.0 * self.size[1] * short + 2.0 > short {
            return bad(
                "speeds",
                format!(
                    "a shape moving {travel:.1} px does not fit in {}×{} frames with size up to {}",
                    self.width, self.height, self.size[1]
                ),
            );
        }
        let all = Colour::ALL.len() * Shape::ALL.len();
        if self.held_out.len() >= all {
            return bad("held_out", "holds out every combination".into());
        }
        Ok(())
    }

    fn is_held_out(&self, colour: Colour, shape: Shape) -> bool {
        self.held_out.contains(&(colour, shape))
    }

    fn speed_word(&self, speed: f64) -> Option<&'static str> {
        let min = self.speeds.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = self.speeds.iter().cloned().fold(0.0, f64::max);
        if max - min < 1e-9 {
            None
        } else if (speed - min).abs() < 1e-9 {
            Some("slowly")
        } else if (speed - max).abs() < 1e-9 {
            Some("quickly")
        } else {
            None
        }
    }

    /// The caption for a list of shapes.
    pub fn caption(&self, shapes: &[ShapeAttributes]) -> String {
        let parts: Vec<String> = shapes
            .iter()
            .map(|s| {
                let speed = self
                    .speed_word(s.speed)
                    .map(|w| format!(" {w}"))
                    .unwrap_or_default();
                format!(
                    "a {} {} moves {}{speed}",
                    s.colour.name(),
                    s.shape.name(),
                    s.direction.name()
                )
            })
            .collect();
        parts.join(" and ")
    }

    /// Draws the attributes of sample `index` of the data set with `seed`.
    pub fn draw(&self, seed: u64, index: u64, split: Split) -> Result<Vec<ShapeAttributes>> {
        self.validate()?;
        if split == Split::HeldOut && self.held_out.is_empty() {
            return Err(DataError::Option {
                key: "held_out",
                reason: "the held-out split needs held-out combinations".into(),
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(index);
        let count = rng.gen_range(1..=self.max_shapes);
        let short = self.height.min(self.width) as f64;
        let mut shapes: Vec<ShapeAttributes> = Vec::with_capacity(count);
        while shapes.len() < count {
            let colour = Colour::ALL[rng.gen_range(0..Colour::ALL.len())];
            let shape = Shape::ALL[rng.gen_range(0..Shape::ALL.len())];
            if shapes.iter().any(|s| s.colour == colour) {
                continue;
            }
            let held = self.is_held_out(colour, shape);
            let ok = match (split, shapes.is_empty()) {
                (Split::All, _) => true,
                (Split::Train, _) => !held,
                (Split::HeldOut, true) => held,
                (Split::HeldOut, false) => true,
            };
            if !ok {
                continue;
            }
            let direction = Direction::ALL[rng.gen_range(0..Direction::ALL.len())];
            let speed = self.speeds[rng.gen_range(0..self.speeds.len())];
            let size = rng.gen_range(self.size[0]..=self.size[1]) * short;
            let (ux, uy) = direction.unit();
            let travel = speed * (self.frames - 1) as f64;
            let (dx, dy) = (ux * travel, uy * travel);
            // Start so that the whole path stays inside the frame with a one-pixel margin.
            let range = |extent: f64, d: f64| {
                let lo = size + 1.0 - d.min(0.0);
                let hi = extent - size - 1.0 - d.max(0.0);
                (lo, hi.max(lo))
            };
            let (x_lo, x_hi) = range(self.width as f64, dx);
            let (y_lo, y_hi) = range(self.height as f64, dy);
            let (x0, y0) = (rng.gen_range(x_lo..=x_hi), rng.gen_range(y_lo..=y_hi));
            let centres = (0..self.frames)
                .map(|t| (x0 + ux * speed * t as f64, y0 + uy * speed * t as f64))
                .collect();
            shapes.push(ShapeAttributes {
                shape,
                colour,
                direction,
                speed,
                size,
                centres,
            });
        }
        Ok(shapes)
    }

    /// Renders sample `index` of the data set with `seed`.
    pub fn sample(&self, seed: u64, index: u64, split: Split) -> Result<ShapesSample> {
        let shapes = self.draw(seed, index, split)?;
        Ok(ShapesSample {
            video: self.render(&shapes),
            caption: self.caption(&shapes),
            shapes,
        })
    }

    /// Renders shapes (later ones on top) over the background: `[3, T, H, W]` in [-1, 1].
    pub fn render(&self, shapes: &[ShapeAttributes]) -> Tensor {
        let (t, h, w) = (self.frames as i64, self.height as i64, self.width as i64);
        let opts = (Kind::Double, Device::Cpu);
        let xs = (Tensor::arange(w, opts) + 0.5).view([1, 1, w]);
        let ys = (Tensor::arange(h, opts) + 0.5).view([1, h, 1]);
        let background = Tensor::from_slice(&self.background).view([3, 1, 1, 1]);
        let mut video = background.expand([3, t, h, w], false).copy();
        for s in shapes {
            let cx = Tensor::from_slice(&s.centres.iter().map(|c| c.0).collect::<Vec<_>>())
                .view([t, 1, 1]);
            let cy = Tensor::from_slice(&s.centres.iter().map(|c| c.1).collect::<Vec<_>>())
                .view([t, 1, 1]);
            let (dx, dy) = (&xs - cx, &ys - cy);
            let distance = signed_distance(s.shape, &dx, &dy, s.size);
            // Anti-aliasing: coverage falls from 1 to 0 across the one pixel around the edge.
            let alpha = (distance.neg() + 0.5).clamp(0.0, 1.0).unsqueeze(0);
            let colour = Tensor::from_slice(&s.colour.rgb()).view([3, 1, 1, 1]);
            video = &video * (1.0 - &alpha) + colour * &alpha;
        }
        (video * 2.0 - 1.0).to_kind(Kind::Float)
    }
}

/// Signed distance in pixels to the outline (negative inside), for offsets `(dx, dy)` from the
/// centre.
fn signed_distance(shape: Shape, dx: &Tensor, dy: &Tensor, r: f64) -> Tensor {
    match shape {
        Shape::Circle => (dx.square() + dy.square()).sqrt() - r,
        Shape::Square => dx.abs().maximum(&dy.abs()) - r,
        Shape::Triangle => {
            // Upward equilateral triangle with circumradius r (inradius r/2): outward edge
            // normals (0, 1) at the bottom and (±√3/2, -1/2) on the slanted sides (y points
            // down in images).
            let (c, s) = (3f64.sqrt() / 2.0, 0.5);
            let bottom = dy - r / 2.0;
            let slant_right = dx * c - dy * s - r / 2.0;
            let slant_left = -dx * c - dy * s - r / 2.0;
            bottom.maximum(&slant_right).maximum(&slant_left)
        }
    }
}

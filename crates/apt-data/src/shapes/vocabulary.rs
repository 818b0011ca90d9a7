//! The benchmark's vocabulary: outlines, colours and directions, with their caption words.

use serde::{Deserialize, Serialize};

/// A shape's outline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// A disc of radius `r`.
    Circle,
    /// An axis-aligned square of half-side `r`.
    Square,
    /// An upward-pointing equilateral triangle with circumradius `r`.
    Triangle,
}

/// The palette (RGB in [0, 1]); colours are far apart so an estimator can tell them apart in
/// blurry or noisy generated videos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    /// (1, 0, 0)
    Red,
    /// (0, 1, 0)
    Green,
    /// (0, 0, 1)
    Blue,
    /// (1, 1, 0)
    Yellow,
    /// (1, 0, 1)
    Magenta,
    /// (0, 1, 1)
    Cyan,
}

/// One of eight directions of motion (image coordinates: y grows downwards).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// −x
    Left,
    /// +x
    Right,
    /// −y
    Up,
    /// +y
    Down,
    /// −x −y
    UpLeft,
    /// +x −y
    UpRight,
    /// −x +y
    DownLeft,
    /// +x +y
    DownRight,
}

impl Shape {
    /// Every shape.
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    /// The word in captions.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }
}

impl Colour {
    /// Every colour.
    pub const ALL: [Colour; 6] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Magenta,
        Colour::Cyan,
    ];

    /// The word in captions.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Magenta => "magenta",
            Colour::Cyan => "cyan",
        }
    }

    /// RGB in [0, 1].
    pub fn rgb(self) -> [f64; 3] {
        match self {
            Colour::Red => [1.0, 0.0, 0.0],
            Colour::Green => [0.0, 1.0, 0.0],
            Colour::Blue => [0.0, 0.0, 1.0],
            Colour::Yellow => [1.0, 1.0, 0.0],
            Colour::Magenta => [1.0, 0.0, 1.0],
            Colour::Cyan => [0.0, 1.0, 1.0],
        }
    }
}

impl Direction {
    /// Every direction.
    pub const ALL: [Direction; 8] = [
        Direction::Left,
        Direction::Right,
        Direction::Up,
        Direction::Down,
        Direction::UpLeft,
        Direction::UpRight,
        Direction::DownLeft,
        Direction::DownRight,
    ];

    /// The words in captions ("left", "up and to the right", …).
    pub fn name(self) -> &'static str {
        match self {
            Direction::Left => "left",
            Direction::Right => "right",
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::UpLeft => "up and to the left",
            Direction::UpRight => "up and to the right",
            Direction::DownLeft => "down and to the left",
            Direction::DownRight => "down and to the right",
        }
    }

    /// Unit vector `(dx, dy)`.
    pub fn unit(self) -> (f64, f64) {
        let d = std::f64::consts::FRAC_1_SQRT_2;
        match self {
            Direction::Left => (-1.0, 0.0),
            Direction::Right => (1.0, 0.0),
            Direction::Up => (0.0, -1.0),
            Direction::Down => (0.0, 1.0),
            Direction::UpLeft => (-d, -d),
            Direction::UpRight => (d, -d),
            Direction::DownLeft => (-d, d),
            Direction::DownRight => (d, d),
        }
    }

    /// The direction nearest to the motion `(dx, dy)`.
    pub fn nearest(dx: f64, dy: f64) -> Direction {
        let angle = dy.atan2(dx);
        *Direction::ALL
            .iter()
            .min_by(|a, b| {
                let da = angle_gap(angle, a.unit().1.atan2(a.unit().0));
                let db = angle_gap(angle, b.unit().1.atan2(b.unit().0));
                da.total_cmp(&db)
            })
            .expect("eight directions")
    }
}

fn angle_gap(a: f64, b: f64) -> f64 {
    let d = (a - b).rem_euclid(std::f64::consts::TAU);
    d.min(std::f64::consts::TAU - d)
}

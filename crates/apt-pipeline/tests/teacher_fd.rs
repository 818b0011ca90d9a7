//! The any-data metric ranks known cases right: with the shipped moving-shapes teacher, real
//! clips against themselves under other noise sit near zero, and blurring or noising the real
//! clips moves them away in proportion to how much.

use std::path::PathBuf;

use apt_data::shapes::{ShapesConfig, Split};
use apt_pipeline::eval::metrics::frechet_distance;
use apt_pipeline::eval::teacher_fd::{teacher_frechet, TeacherFeatures};
use apt_pipeline::run_dir::load_exported;
use apt_pipeline::text::TextConditioner;
use tch::{Device, Kind, Tensor};

fn teacher_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/teachers/shapes-4x32-xpred-8000")
}

/// Each frame averaged over a `k × k` window (edges replicated).
fn blur(x: &Tensor, k: i64) -> Tensor {
    let padded = x.pad([k / 2, k / 2, k / 2, k / 2, 0, 0], "replicate", None);
    padded.avg_pool3d([1, k, k], [1, 1, 1], [0, 0, 0], false, true, None)
}

#[test]
fn the_teacher_feature_distance_ranks_blur_and_noise_in_proportion() {
    let teacher = load_exported(&teacher_dir().join("teacher.safetensors"), Device::Cpu).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let text = TextConditioner::minilm(cache.path(), 16, Device::Cpu).unwrap();
    let empty = text.batch(&[String::new()], &[false]).unwrap();
    let features = TeacherFeatures::new(&teacher.model, empty, 16, 77_777, Device::Cpu);
    let shapes = ShapesConfig::new(4, 32, 32);
    let real: Vec<Tensor> = (0..96u64)
        .map(|i| {
            shapes
                .render(&shapes.draw(1, i, Split::All).unwrap())
                .to_kind(Kind::Float)
        })
        .collect();
    let real = Tensor::stack(&real, 0);
    let f_real = features.of(&real, 0, 0).unwrap();
    let fd = |x: &Tensor| teacher_frechet(&features.of(x, 0, 0).unwrap(), &f_real, "test").unwrap();

    let floor = teacher_frechet(&features.of(&real, 0, 1).unwrap(), &f_real, "test").unwrap();
    let (blur3, blur7) = (fd(&blur(&real, 3)), fd(&blur(&real, 7)));
    let noise = Tensor::randn(real.size(), (Kind::Float, Device::Cpu));
    let (noise1, noise3) = (fd(&(&real + &noise * 0.1)), fd(&(&real + &noise * 0.3)));
    println!("floor {floor:.4} blur3 {blur3:.4} blur7 {blur7:.4} noise0.1 {noise1:.4} noise0.3 {noise3:.4}");
    assert!(
        floor < blur3 && blur3 < blur7,
        "blur: {floor} {blur3} {blur7}"
    );
    assert!(
        floor < noise1 && noise1 < noise3,
        "noise: {floor} {noise1} {noise3}"
    );
    assert!(
        floor < 0.2 * blur7.min(noise3),
        "the floor is not near zero: {floor}"
    );
    // The same set scores zero; too few clips for the dimensions is an error naming the key.
    assert!(frechet_distance(&f_real, &f_real) < 1e-9);
    let few = f_real.narrow(0, 0, 16);
    let err = teacher_frechet(&few, &few, "report.prompts").unwrap_err();
    assert!(err.to_string().contains("report.prompts"), "{err}");
}

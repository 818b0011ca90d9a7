//! FVD's plumbing against a reference (scripts/make_fvd_fixture.py): our Fréchet distance
//! equals scipy's on fixed features; a TorchScript module with the I3D file's interface gives
//! the features PyTorch gives after the same preprocessing; a module of another interface, or
//! a file that is no TorchScript, is refused naming the file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use apt_pipeline::eval::fvd::I3d;
use apt_pipeline::eval::metrics::frechet_distance;
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fvd")
}

fn io() -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("fvd.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn the_frechet_distance_equals_scipys() {
    let io = io();
    let ours = frechet_distance(&io["a"], &io["b"]);
    let scipy = io["frechet"].double_value(&[]);
    assert!(
        (ours - scipy).abs() <= 1e-9 * scipy.abs().max(1.0),
        "{ours} vs {scipy}"
    );
}

#[test]
fn an_i3d_interface_gives_pytorchs_features_and_other_files_are_refused() {
    let io = io();
    let i3d = I3d::load(&fixtures().join("fake_i3d.pt"), Device::Cpu).unwrap();
    let features = i3d.features(&io["clips"]).unwrap();
    assert_eq!(features.size(), vec![3, 400]);
    let d = (features - io["features"].to_kind(Kind::Float))
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-4, "max abs difference {d}");

    let err = I3d::load(&fixtures().join("wrong_i3d.pt"), Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("wrong_i3d.pt") && err.contains("interface"),
        "{err}"
    );
    let err = I3d::load(&fixtures().join("fvd.safetensors"), Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("fvd.safetensors") && err.contains("TorchScript"),
        "{err}"
    );
}

//! Clean-sample ("x") prediction: the network's output turned into the velocity every loss and
//! sampler uses, checked on the formula, on a real MMDiT, and on the one-step generator.

use apt_flow::flow::{velocity_from_sample, SAMPLE_PREDICTION_MIN_T};
use apt_flow::{interpolate, velocity_target, Conditioning, OneStepGenerator, VelocityModel};
use apt_mmdit::{Mmdit, Prediction, Preset};
use proptest::prelude::*;
use tch::{nn, Device, Kind, Tensor};

const CPU: Device = Device::Cpu;

fn tiny(prediction: Prediction) -> (nn::VarStore, Mmdit) {
    let mut cfg = Preset::named("tiny").unwrap().config;
    cfg.prediction = prediction;
    let vs = nn::VarStore::new(CPU);
    tch::manual_seed(0);
    let model = Mmdit::new(vs.root(), &cfg).unwrap();
    // adaLN-Zero starts the output projection at zero; give it weights so the test sees them.
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.contains("proj_out") || name.contains("norm_out") {
                t.copy_(&(Tensor::randn_like(&t) * 0.1));
            }
        }
    });
    (vs, model)
}

fn text(b: i64) -> Conditioning {
    Conditioning {
        context: Tensor::randn([b, 8, 32], (Kind::Float, CPU)),
        pooled: Tensor::randn([b, 32], (Kind::Float, CPU)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// The exact clean sample gives the exact velocity target `ε − x0` wherever `t` is above
    /// the clamp, for any data, noise and time.
    #[test]
    fn the_true_sample_gives_the_true_velocity(seed in 0i64..10_000, t in SAMPLE_PREDICTION_MIN_T..=1.0) {
        tch::manual_seed(seed);
        let x0 = Tensor::randn([3, 2, 4], (Kind::Double, CPU));
        let eps = Tensor::randn([3, 2, 4], (Kind::Double, CPU));
        let ts = Tensor::from_slice(&[t, t, t]).to_kind(Kind::Double);
        let x_t = interpolate(&x0, &eps, &ts);
        let v = velocity_from_sample(&x_t, &ts, &x0);
        let err = (v - velocity_target(&x0, &eps)).abs().max().double_value(&[]);
        prop_assert!(err < 1e-9, "error {err}");
    }

    /// Below the clamp the division is by the clamp, so the velocity stays bounded.
    #[test]
    fn small_times_divide_by_the_clamp(t in 0.0f64..SAMPLE_PREDICTION_MIN_T) {
        let x_t = Tensor::ones([1, 4], (Kind::Double, CPU));
        let x0 = Tensor::zeros([1, 4], (Kind::Double, CPU));
        let v = velocity_from_sample(&x_t, &Tensor::from_slice(&[t]), &x0);
        let want = 1.0 / SAMPLE_PREDICTION_MIN_T;
        prop_assert!((v.max().double_value(&[]) - want).abs() < 1e-9);
    }
}

#[test]
fn an_mmdit_that_predicts_the_sample_reports_the_velocity_it_implies() {
    let (_vs, model) = tiny(Prediction::Sample);
    let x = Tensor::randn([2, 4, 4, 8, 8], (Kind::Float, CPU));
    let t = Tensor::from_slice(&[0.7f32, 0.01]);
    let cond = text(2);
    let out = model.forward(&x, &t, &cond.context, &cond.pooled).unwrap();
    assert!(
        out.abs().max().double_value(&[]) > 1e-3,
        "output is not trivial"
    );
    let v = model.velocity(&x, &t, &cond).unwrap();
    let clamped =
        Tensor::from_slice(&[0.7f32, SAMPLE_PREDICTION_MIN_T as f32]).view([2, 1, 1, 1, 1]);
    let want = (&x - &out) / clamped;
    assert!(v.allclose(&want, 1e-5, 1e-5, false));
    // One time for the whole batch works like one per sample.
    let one = model
        .velocity(&x, &Tensor::from_slice(&[0.7f32]), &cond)
        .unwrap();
    let per = model
        .velocity(&x, &Tensor::from_slice(&[0.7f32, 0.7]), &cond)
        .unwrap();
    assert!(one.allclose(&per, 1e-5, 1e-5, false));
}

#[test]
fn the_one_step_generator_of_a_sample_predictor_is_its_output_at_t_one() {
    let (_vs, model) = tiny(Prediction::Sample);
    let z = Tensor::randn([2, 4, 4, 8, 8], (Kind::Float, CPU));
    let cond = text(2);
    let out = model
        .forward(
            &z,
            &Tensor::ones([2], (Kind::Float, CPU)),
            &cond.context,
            &cond.pooled,
        )
        .unwrap();
    let x = OneStepGenerator::new(&model).generate(&z, &cond).unwrap();
    assert!(x.allclose(&out, 1e-5, 1e-5, false));
}

#[test]
fn a_velocity_predictor_is_unchanged() {
    let (_vs, model) = tiny(Prediction::Velocity);
    let x = Tensor::randn([2, 4, 4, 8, 8], (Kind::Float, CPU));
    let t = Tensor::from_slice(&[0.3f32, 0.9]);
    let cond = text(2);
    let out = model.forward(&x, &t, &cond.context, &cond.pooled).unwrap();
    assert!(model.velocity(&x, &t, &cond).unwrap().equal(&out));
}

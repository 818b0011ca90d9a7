//! The loader's decoding threads: jobs `(epoch, position, index)` in, samples out, each sample
//! cut with its own random stream (a pure function of the seed, the epoch and the item).

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::clip::ClipSpec;
use crate::dataset::{Dataset, Sample};
use crate::error::{DataError, Result};

/// One sample to decode.
pub(crate) struct Job {
    pub(crate) epoch: u64,
    pub(crate) position: usize,
    pub(crate) index: usize,
}

pub(crate) type Done = (u64, usize, Result<Sample>);

pub(crate) struct Pool {
    pub(crate) jobs: Option<Sender<Job>>,
    pub(crate) results: Receiver<Done>,
    handles: Vec<JoinHandle<()>>,
}

/// The per-sample random stream: a pure function of `(seed, epoch, index)`.
fn sample_rng(seed: u64, epoch: u64, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((epoch << 40) ^ index as u64);
    rng
}

pub(crate) fn load(dataset: &Dataset, clip: &ClipSpec, seed: u64, job: &Job) -> Result<Sample> {
    let item = &dataset.items[job.index];
    let mut rng = sample_rng(seed, job.epoch, job.index);
    // A panic inside a decoder must not take the loader down (or hang it).
    std::panic::catch_unwind(AssertUnwindSafe(|| item.load(clip, &mut rng))).unwrap_or_else(|_| {
        Err(DataError::Decode {
            path: item.path().to_path_buf(),
            reason: "the decoder panicked".into(),
        })
    })
}

impl Pool {
    pub(crate) fn new(workers: usize, dataset: Arc<Dataset>, clip: ClipSpec, seed: u64) -> Self {
        let (job_tx, job_rx) = channel::<Job>();
        let (done_tx, done_rx) = channel::<Done>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let handles = (0..workers)
            .map(|_| {
                let (jobs, done, dataset) =
                    (Arc::clone(&job_rx), done_tx.clone(), Arc::clone(&dataset));
                std::thread::spawn(move || loop {
                    let job = match jobs.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let result = load(&dataset, &clip, seed, &job);
                    if done.send((job.epoch, job.position, result)).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Self {
            jobs: Some(job_tx),
            results: done_rx,
            handles,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs.take(); // workers see the channel close and exit
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

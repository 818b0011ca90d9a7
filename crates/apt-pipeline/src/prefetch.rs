//! Moving-shapes batches rendered ahead of the training loop on a thread of their own, so that
//! the loop does not wait for the host to draw clips; pinned (page-locked) when the run trains
//! on CUDA, so that the step's copy to the device can be asynchronous.
//!
//! Sample `i` of the stream is a pure function of `(seed, i)`, so a batch rendered ahead is
//! exactly the batch that would be rendered when asked for: the thread renders the range the
//! loop will most likely ask for next (the one after the last); any other request is rendered
//! when it comes. Results never depend on the prefetching.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use apt_data::shapes::{ShapesConfig, Split};
use tch::{Device, Tensor};

/// Samples `[first, first + len)` of the stream.
type Range = (u64, usize);

/// A rendered batch: clips `[B, 3, T, H, W]` and captions.
pub type Rendered = apt_data::Result<(Tensor, Vec<String>)>;

/// Renders samples `[first, first + len)` of the training stream of `config` with `seed`.
pub fn render_range(config: &ShapesConfig, seed: u64, (first, len): Range) -> Rendered {
    let mut videos = Vec::with_capacity(len);
    let mut captions = Vec::with_capacity(len);
    for i in first..first + len as u64 {
        let s = config.sample(seed, i, Split::Train)?;
        videos.push(s.video);
        captions.push(s.caption);
    }
    Ok((Tensor::stack(&videos, 0), captions))
}

/// The rendering thread and the one range it is working on.
pub struct ShapesPrefetch {
    requests: Option<Sender<Range>>,
    results: Receiver<(Range, Rendered)>,
    ahead: Option<Range>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ShapesPrefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShapesPrefetch {{ ahead: {:?} }}", self.ahead)
    }
}

impl ShapesPrefetch {
    /// Starts the thread; batches are pinned for `device` when it is a CUDA device.
    pub fn start(config: ShapesConfig, seed: u64, device: Device) -> Self {
        let (requests, inbox) = channel::<Range>();
        let (outbox, results) = channel();
        let pin = device.is_cuda();
        let thread = std::thread::Builder::new()
            .name("shapes-prefetch".into())
            .spawn(move || {
                for range in inbox {
                    let rendered = render_range(&config, seed, range)
                        .map(|(v, c)| (if pin { v.pin_memory(device) } else { v }, c));
                    if outbox.send((range, rendered)).is_err() {
                        break;
                    }
                }
            })
            .expect("a thread to render moving shapes");
        Self {
            requests: Some(requests),
            results,
            ahead: None,
            thread: Some(thread),
        }
    }

    /// The batch of samples `[first, first + len)`, then starts rendering `[first + stride,
    /// first + stride + len)` (the loop's next request when it keeps its batch and shard).
    pub fn take(&mut self, first: u64, len: usize, stride: u64) -> Rendered {
        let wanted = (first, len);
        if self.ahead != Some(wanted) {
            // Not what was rendered ahead (a resume, another shard): drop that, ask for this.
            self.wait();
            self.request(wanted);
        }
        let (range, rendered) = self.receive();
        debug_assert_eq!(range, wanted);
        self.request((first + stride, len));
        rendered
    }

    fn request(&mut self, range: Range) {
        let sender = self.requests.as_ref().expect("running");
        sender.send(range).expect("the rendering thread is running");
        self.ahead = Some(range);
    }

    fn receive(&mut self) -> (Range, Rendered) {
        self.ahead = None;
        self.results.recv().expect("the rendering thread answers")
    }

    /// Waits for (and drops) the batch being rendered ahead, if any.
    fn wait(&mut self) {
        if self.ahead.is_some() {
            let _ = self.receive();
        }
    }
}

impl Drop for ShapesPrefetch {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use apt_flow::data::{ClipSource, Cursor};
    use apt_flow::train::Shard;
    use tch::Device;

    use crate::data::{DataConfig, TrainData};

    /// The same batches with and without prefetching, through shards, odd sizes and a restore.
    #[test]
    fn prefetching_serves_exactly_the_batches_rendered_on_demand() {
        let config: DataConfig =
            toml::from_str("kind = \"shapes\"\nshapes = { frames = 2, height = 16, width = 16 }")
                .unwrap();
        let plain = TrainData::open(&config, 4, 0, Shard::WHOLE).unwrap();
        let ahead = TrainData::open(&config, 4, 0, Shard::WHOLE)
            .unwrap()
            .prefetching_always(Device::Cpu);
        let mut sources = [plain, ahead];
        let half = Shard { rank: 1, world: 2 };
        let mut draws: [Vec<(tch::Tensor, Vec<String>)>; 2] = Default::default();
        for (source, out) in sources.iter_mut().zip(draws.iter_mut()) {
            out.push(source.next_clips(4).unwrap());
            out.push(source.next_clips(4).unwrap());
            out.push(source.next_shard(4, half).unwrap());
            out.push(source.next_shard(4, half).unwrap());
            source
                .restore(Cursor {
                    epoch: 0,
                    position: 4,
                })
                .unwrap();
            out.push(source.next_clips(4).unwrap());
            out.push(source.next_clips(3).unwrap());
            assert_eq!(source.cursor().position, 11);
        }
        for (i, ((a, ca), (b, cb))) in draws[0].iter().zip(&draws[1]).enumerate() {
            assert!(a.equal(b), "draw {i}: clips differ");
            assert_eq!(ca, cb, "draw {i}: captions differ");
        }
        // The restore really went back: the fifth draw is the second.
        assert!(draws[0][4].0.equal(&draws[0][1].0));
    }
}

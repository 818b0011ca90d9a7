//! What the training loop needs from the other processes of a data-parallel run, as a trait a
//! backend implements (apt-dist: MPI), plus the loop's uses of it: gradients averaged in
//! fixed-order buckets, weights broadcast from rank 0, scalars averaged, and the [`Shard`] of
//! a global batch a rank trains on.
//!
//! A run of N ranks with global batch B equals a run of one rank with batch B: every rank draws
//! the same random numbers for the whole global batch (one shared stream, so checkpoints do not
//! depend on N) and keeps its contiguous `B/N` slice; each rank's loss is the mean over its
//! slice, so the mean over ranks of the gradients is the gradient of the global mean.

use std::collections::BTreeSet;

use tch::{nn, Kind, Tensor};

use super::flat::FlatParams;
use super::metrics::Logged;

use crate::error::{FlowError, Result};

/// Collective operations over the ranks of one run. Every rank calls the same operations in
/// the same order with tensors of the same shape and kind; tensors are dense and contiguous
/// (on the CPU for the MPI backend).
pub trait Collective {
    /// This process's rank, `0..world_size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world_size(&self) -> usize;
    /// The backend (`single`, `mpi`), for logs.
    fn backend(&self) -> &str;
    /// In place: `tensor ← Σ_r tensor_r` on every rank.
    fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<()>;
    /// In place: `tensor ← tensor_root` on every rank.
    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<()>;
    /// Every rank's `local` `[n, …]`, concatenated in rank order along dim 0: `[N·n, …]`.
    fn all_gather(&self, local: &Tensor) -> Result<Tensor>;
    /// Chunk `rank` (of N equal chunks along dim 0) of `Σ_r tensor_r`; dim 0 must divide by N.
    fn reduce_scatter_sum(&self, tensor: &Tensor) -> Result<Tensor>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// Starts [`Self::all_gather`] and returns at once where the backend can (c10d: Gloo's
    /// threads, NCCL's stream), so that the caller computes while it runs; [`Pending::wait`]
    /// gives the result. By default it gathers now.
    fn all_gather_start(&self, local: &Tensor) -> Result<Box<dyn Pending>> {
        Ok(Box::new(Gathered(self.all_gather(local)?)))
    }

    /// Whether this is rank 0, the rank that writes checkpoints, metrics and previews.
    fn is_main(&self) -> bool {
        self.rank() == 0
    }
}

/// A collective that was started ([`Collective::all_gather_start`]).
pub trait Pending {
    /// Waits for it and returns its result.
    fn wait(self: Box<Self>) -> Result<Tensor>;
}

/// A result already there.
struct Gathered(Tensor);

impl Pending for Gathered {
    fn wait(self: Box<Self>) -> Result<Tensor> {
        Ok(self.0)
    }
}

/// A world of one process: every operation is the identity, nothing is copied.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn backend(&self) -> &str {
        "single"
    }
    fn all_reduce_sum(&self, _tensor: &mut Tensor) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _tensor: &mut Tensor, _root: usize) -> Result<()> {
        Ok(())
    }
    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        Ok(local.shallow_clone())
    }
    fn reduce_scatter_sum(&self, tensor: &Tensor) -> Result<Tensor> {
        Ok(tensor.shallow_clone())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// The slice of a global batch one rank trains on: contiguous, `global / world` samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This rank.
    pub rank: usize,
    /// Ranks in the run.
    pub world: usize,
}

impl Shard {
    /// The whole batch (one rank).
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    /// The shard of `collective`'s rank.
    pub fn of(collective: &dyn Collective) -> Self {
        Self {
            rank: collective.rank(),
            world: collective.world_size(),
        }
    }

    /// `(start, len)` of this rank's samples in a global batch of `global`; an error naming
    /// `key` unless `global` divides by the world size (unequal shards would weight samples
    /// unequally in the mean over ranks).
    pub fn range(&self, global: usize, key: &str) -> Result<(usize, usize)> {
        if self.world == 0 || global == 0 || !global.is_multiple_of(self.world) {
            return Err(FlowError::Config {
                key: key.into(),
                reason: format!(
                    "a global batch of {global} does not split into {} equal shards",
                    self.world
                ),
            });
        }
        let len = global / self.world;
        Ok((self.rank * len, len))
    }

    /// This rank's rows (dim 0) of `global`, a tensor drawn for the whole global batch.
    pub fn rows(&self, global: &Tensor, key: &str) -> Result<Tensor> {
        let (start, len) = self.range(global.size()[0] as usize, key)?;
        Ok(global.narrow(0, start as i64, len as i64))
    }

    /// This rank's items of `global`.
    pub fn items<T: Clone>(&self, global: &[T], key: &str) -> Result<Vec<T>> {
        let (start, len) = self.range(global.len(), key)?;
        Ok(global[start..start + len].to_vec())
    }
}

/// Elements per gradient bucket (16 MiB of fp32): large enough to amortise a collective's
/// latency, small enough not to double peak memory.
pub const BUCKET_ELEMENTS: i64 = 4 << 20;

/// `(name, tensor)` pairs in name order — the same order on every rank.
fn sorted(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Applies `reduce` to `tensors` packed into flat fp32 buckets of at most [`BUCKET_ELEMENTS`]
/// (a tensor larger than that is a bucket of its own), then copies the results back.
fn bucketed(
    tensors: &mut [Tensor],
    reduce: &mut dyn FnMut(&mut Tensor) -> Result<()>,
) -> Result<()> {
    let mut start = 0;
    while start < tensors.len() {
        let mut end = start;
        let mut elements = 0;
        while end < tensors.len()
            && (end == start || elements + tensors[end].numel() as i64 <= BUCKET_ELEMENTS)
        {
            elements += tensors[end].numel() as i64;
            end += 1;
        }
        let group = &mut tensors[start..end];
        tch::no_grad(|| -> Result<()> {
            let flat: Vec<Tensor> = group
                .iter()
                .map(|t| t.to_kind(Kind::Float).reshape([-1]))
                .collect();
            let mut bucket = Tensor::cat(&flat, 0);
            reduce(&mut bucket)?;
            let sizes: Vec<i64> = group.iter().map(|t| t.numel() as i64).collect();
            for (t, part) in group.iter_mut().zip(bucket.split_with_sizes(&sizes, 0)) {
                t.copy_(&part.view_as(t));
            }
            Ok(())
        })?;
        start = end;
    }
    Ok(())
}

/// Averages the gradients of `vs`'s trainable variables over ranks, in name order and
/// fixed-size buckets: `g ← (1/N)·Σ_r g_r`. Variables without a gradient are skipped; every rank
/// must have gradients for the same variables (checked: an error otherwise). No-op for one rank.
pub fn all_reduce_mean_grads(collective: &dyn Collective, vs: &nn::VarStore) -> Result<()> {
    let n = collective.world_size();
    if n == 1 {
        return Ok(());
    }
    let mut grads: Vec<Tensor> = sorted(vs)
        .into_iter()
        .filter(|(_, v)| v.requires_grad())
        .map(|(_, v)| v.grad())
        .filter(Tensor::defined)
        .collect();
    let count = grads.iter().map(|g| g.numel() as i64).sum::<i64>();
    let counts = collective.all_gather(&Tensor::from_slice(&[count]))?;
    let counts = Vec::<i64>::try_from(&counts)?;
    if counts.iter().any(|&c| c != count) {
        return Err(FlowError::Collective(format!(
            "the ranks have gradients of different sizes {counts:?}: they run different models or steps"
        )));
    }
    bucketed(&mut grads, &mut |bucket| {
        collective.all_reduce_sum(bucket)?;
        let _ = bucket.g_div_scalar_(n as f64);
        Ok(())
    })
}

/// The `[start, start + len)` slice of a flat buffer as buckets of at most
/// [`BUCKET_ELEMENTS`], each reduced in place (views: nothing is packed or copied back).
fn flat_buckets(
    buffer: &Tensor,
    start: i64,
    len: i64,
    reduce: &mut dyn FnMut(&mut Tensor) -> Result<()>,
) -> Result<()> {
    let mut at = start;
    while at < start + len {
        let n = BUCKET_ELEMENTS.min(start + len - at);
        reduce(&mut buffer.narrow(0, at, n))?;
        at += n;
    }
    Ok(())
}

/// Averages a flat gradient buffer (a part's [`FlatParams::grad`]) over ranks in fixed-size
/// buckets, in place: `g ← (1/N)·Σ_r g_r`. No-op for one rank.
pub fn all_reduce_mean_flat(collective: &dyn Collective, grad: &Tensor) -> Result<()> {
    let n = collective.world_size();
    if n == 1 {
        return Ok(());
    }
    flat_buckets(grad, 0, grad.numel() as i64, &mut |bucket| {
        collective.all_reduce_sum(bucket)?;
        let _ = bucket.g_div_scalar_(n as f64);
        Ok(())
    })
}

/// After a ZeRO-1 step: every rank's master weights become their owners' (rank `r` owns
/// `owners[r]`, a contiguous range of the layout), bucketed. The caller syncs bf16 copies.
pub fn broadcast_flat_from_owners(
    collective: &dyn Collective,
    flat: &FlatParams,
    owners: &[BTreeSet<String>],
) -> Result<()> {
    for (root, names) in owners.iter().enumerate() {
        let (start, len) = flat.range_of(names);
        flat_buckets(flat.master(), start, len, &mut |bucket| {
            collective.broadcast(bucket, root)
        })?;
    }
    Ok(())
}

/// Makes a flat buffer (master weights, an EMA's) equal to rank `root`'s, bucketed.
pub fn broadcast_flat(collective: &dyn Collective, buffer: &Tensor, root: usize) -> Result<()> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    flat_buckets(buffer, 0, buffer.numel() as i64, &mut |bucket| {
        collective.broadcast(bucket, root)
    })
}

/// Makes every variable of `vs` (trainable or not) equal to rank `root`'s.
pub fn broadcast_weights(
    collective: &dyn Collective,
    vs: &nn::VarStore,
    root: usize,
) -> Result<()> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    let mut tensors: Vec<Tensor> = sorted(vs).into_iter().map(|(_, t)| t).collect();
    bucketed(&mut tensors, &mut |bucket| {
        collective.broadcast(bucket, root)
    })
}

/// Makes `tensors` (e.g. an EMA's shadow weights) equal to rank `root`'s, in the given order.
pub fn broadcast_tensors(
    collective: &dyn Collective,
    tensors: &mut [Tensor],
    root: usize,
) -> Result<()> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    bucketed(tensors, &mut |bucket| collective.broadcast(bucket, root))
}

/// ZeRO-1's split of `vs`'s trainable variables over `world` ranks: whole variables, largest
/// first, each to the rank holding the fewest elements so far (ties: lowest rank; names break
/// size ties) — the same answer on every rank. Entry `r` is rank `r`'s share.
pub fn partition_variables(vs: &nn::VarStore, world: usize) -> Vec<BTreeSet<String>> {
    let mut vars: Vec<(String, i64)> = sorted(vs)
        .into_iter()
        .filter(|(_, v)| v.requires_grad())
        .map(|(k, v)| (k, v.numel() as i64))
        .collect();
    vars.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut shares = vec![BTreeSet::new(); world];
    let mut load = vec![0i64; world];
    for (name, n) in vars {
        let r = (0..world).min_by_key(|&r| (load[r], r)).expect("world ≥ 1");
        load[r] += n;
        shares[r].insert(name);
    }
    shares
}

/// Means over ranks of `values`, in place: `v_i ← (1/N)·Σ_r v_i,r`.
pub fn all_reduce_mean_scalars(collective: &dyn Collective, values: &mut [f64]) -> Result<()> {
    let n = collective.world_size();
    if n == 1 || values.is_empty() {
        return Ok(());
    }
    let mut t = Tensor::from_slice(values);
    collective.all_reduce_sum(&mut t)?;
    let summed = Vec::<f64>::try_from(&t)?;
    for (v, s) in values.iter_mut().zip(summed) {
        *v = s / n as f64;
    }
    Ok(())
}

/// Data parallel: the means over ranks of the logged values and the loss (device values in
/// one all-reduce, host values in another); returns the mean loss.
pub fn all_reduce_logged(
    collective: &dyn Collective,
    logged: &mut [(String, Logged)],
    loss: Tensor,
) -> Result<Tensor> {
    let n = collective.world_size();
    if n == 1 {
        return Ok(loss);
    }
    let mut host: Vec<f64> = logged
        .iter()
        .filter_map(|(_, v)| match v {
            Logged::Host(h) => Some(*h),
            Logged::Device(_) => None,
        })
        .collect();
    all_reduce_mean_scalars(collective, &mut host)?;
    let mut device: Vec<Tensor> = logged
        .iter()
        .filter_map(|(_, v)| match v {
            Logged::Device(t) => Some(t.reshape([1])),
            Logged::Host(_) => None,
        })
        .collect();
    device.push(loss.reshape([1]));
    let mut stacked = Tensor::cat(&device, 0);
    collective.all_reduce_sum(&mut stacked)?;
    let stacked = stacked / n as f64;
    let (mut h, mut d) = (host.into_iter(), 0);
    for (_, v) in logged.iter_mut() {
        match v {
            Logged::Host(x) => *x = h.next().expect("one each"),
            Logged::Device(t) => {
                *t = stacked.get(d);
                d += 1;
            }
        }
    }
    Ok(stacked.get(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn shards_tile_the_global_batch_in_rank_order() {
        let global: Vec<usize> = (0..8).collect();
        let mut joined = Vec::new();
        for rank in 0..4 {
            joined.extend(Shard { rank, world: 4 }.items(&global, "batch").unwrap());
        }
        assert_eq!(joined, global);
        let err = Shard { rank: 0, world: 3 }
            .range(8, "pretrain.train.batch_size")
            .unwrap_err();
        assert!(
            err.to_string().contains("pretrain.train.batch_size"),
            "{err}"
        );
        let t = Tensor::arange(6, (Kind::Int64, Device::Cpu));
        let rows = Shard { rank: 1, world: 2 }.rows(&t, "b").unwrap();
        assert_eq!(Vec::<i64>::try_from(&rows).unwrap(), [3, 4, 5]);
    }

    #[test]
    fn buckets_round_trip_every_tensor_in_order() {
        let mut tensors: Vec<Tensor> = [3i64, BUCKET_ELEMENTS, 5, 1]
            .iter()
            .enumerate()
            .map(|(i, &n)| Tensor::full([n], i as f64, (Kind::Float, Device::Cpu)))
            .collect();
        let mut sizes = Vec::new();
        bucketed(&mut tensors, &mut |b| {
            sizes.push(b.numel());
            let _ = b.g_mul_scalar_(2.0);
            Ok(())
        })
        .unwrap();
        // 3 alone would fit with the big one? No: 3 + 4Mi > 4Mi, so [3], [4Mi], [5, 1].
        assert_eq!(sizes, [3, BUCKET_ELEMENTS as usize, 6]);
        for (i, t) in tensors.iter().enumerate() {
            assert_eq!(t.min().double_value(&[]), 2.0 * i as f64);
            assert_eq!(t.max().double_value(&[]), 2.0 * i as f64);
        }
    }

    #[test]
    fn a_world_of_one_changes_nothing() {
        let c = SingleProcess;
        let mut v = [1.5, -2.0];
        all_reduce_mean_scalars(&c, &mut v).unwrap();
        assert_eq!(v, [1.5, -2.0]);
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().randn("w", &[4], 0.0, 1.0);
        let before = w.copy();
        broadcast_weights(&c, &vs, 0).unwrap();
        all_reduce_mean_grads(&c, &vs).unwrap();
        assert!(w.equal(&before));
        assert!(c.is_main());
    }
}

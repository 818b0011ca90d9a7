//! [`Collective`] on MPI (Open MPI or MPICH through the `mpi` crate) for CPU tensors. Each
//! operation copies the tensor's elements into an MPI buffer and back: MPI reduces host memory,
//! and the copy is small next to a training step's compute on the CPU.

use apt_flow::train::Collective;
use apt_flow::{FlowError, Result};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use tch::{Device, Kind, Tensor};

/// The MPI world this process joined (`MPI_COMM_WORLD`). MPI is finalised when it is dropped.
pub struct MpiCollective {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    // Dropped last: finalises MPI.
    _universe: Universe,
}

impl std::fmt::Debug for MpiCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MpiCollective {{ rank: {}, size: {} }}",
            self.rank, self.size
        )
    }
}

impl MpiCollective {
    /// Initialises MPI and joins `MPI_COMM_WORLD`. Under `mpirun`/`srun --mpi` this is the
    /// launcher's world; started alone it is a world of one (an MPI singleton). An error when
    /// MPI was already initialised in this process.
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize().ok_or_else(|| {
            FlowError::Collective("MPI is already initialised in this process".into())
        })?;
        let world = universe.world();
        Ok(Self {
            rank: world.rank() as usize,
            size: world.size() as usize,
            world,
            _universe: universe,
        })
    }

    /// Ends every rank's process with `code` (`MPI_Abort`): what a rank does when it cannot go
    /// on, so that the others do not wait for it forever.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// The tensor's elements as a mutable slice of `T` (it must be a contiguous CPU tensor of the
/// matching kind; checked by the callers).
fn elements<T>(t: &mut Tensor) -> &mut [T] {
    let n = t.numel();
    // SAFETY: `t` is a contiguous CPU tensor of kind `T` with `n` elements (checked by the
    // callers through `host`), and the slice lives no longer than the `&mut Tensor` borrow.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, n) }
}

/// A contiguous CPU view of `t` (the same storage when `t` already is one).
fn host(t: &Tensor, what: &str) -> Result<Tensor> {
    if t.device() != Device::Cpu {
        return Err(FlowError::Collective(format!(
            "{what}: the MPI backend reduces CPU tensors, got one on {:?} (use NCCL on GPUs)",
            t.device()
        )));
    }
    Ok(t.contiguous())
}

macro_rules! by_kind {
    ($t:expr, $what:expr, $f:ident ( $($arg:expr),* )) => {
        match $t.kind() {
            Kind::Float => $f::<f32>($($arg),*),
            Kind::Double => $f::<f64>($($arg),*),
            Kind::Int64 => $f::<i64>($($arg),*),
            Kind::Int => $f::<i32>($($arg),*),
            other => Err(FlowError::Collective(format!(
                "{}: the MPI backend handles f32, f64, i64 and i32 tensors, not {other:?}",
                $what
            ))),
        }
    };
}

fn all_reduce_typed<T: Equivalence + Copy>(
    world: &SimpleCommunicator,
    t: &mut Tensor,
) -> Result<()> {
    let data = elements::<T>(t);
    let send = data.to_vec();
    world.all_reduce_into(&send[..], data, SystemOperation::sum());
    Ok(())
}

fn broadcast_typed<T: Equivalence>(
    world: &SimpleCommunicator,
    t: &mut Tensor,
    root: i32,
) -> Result<()> {
    world.process_at_rank(root).broadcast_into(elements::<T>(t));
    Ok(())
}

fn all_gather_typed<T: Equivalence + Copy + Default>(
    world: &SimpleCommunicator,
    t: &mut Tensor,
    size: usize,
) -> Result<Tensor> {
    let local = elements::<T>(t);
    let mut all = vec![T::default(); local.len() * size];
    world.all_gather_into(&local[..], &mut all[..]);
    let mut out = Tensor::empty([all.len() as i64], (t.kind(), Device::Cpu));
    elements::<T>(&mut out).copy_from_slice(&all);
    Ok(out)
}

fn reduce_scatter_typed<T: Equivalence + Copy + Default>(
    world: &SimpleCommunicator,
    t: &mut Tensor,
    size: usize,
) -> Result<Tensor> {
    let send = elements::<T>(t);
    let mut mine = vec![T::default(); send.len() / size];
    world.reduce_scatter_block_into(&send[..], &mut mine[..], SystemOperation::sum());
    let mut out = Tensor::empty([mine.len() as i64], (t.kind(), Device::Cpu));
    elements::<T>(&mut out).copy_from_slice(&mine);
    Ok(out)
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.size
    }

    fn backend(&self) -> &str {
        "mpi"
    }

    fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<()> {
        let mut h = host(tensor, "all_reduce")?;
        by_kind!(h, "all_reduce", all_reduce_typed(&self.world, &mut h))?;
        if h.data_ptr() != tensor.data_ptr() {
            tch::no_grad(|| tensor.copy_(&h));
        }
        Ok(())
    }

    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<()> {
        if root >= self.size {
            return Err(FlowError::Collective(format!(
                "broadcast from rank {root} in a world of {}",
                self.size
            )));
        }
        let mut h = host(tensor, "broadcast")?;
        by_kind!(
            h,
            "broadcast",
            broadcast_typed(&self.world, &mut h, root as i32)
        )?;
        if h.data_ptr() != tensor.data_ptr() {
            tch::no_grad(|| tensor.copy_(&h));
        }
        Ok(())
    }

    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        let mut h = host(local, "all_gather")?;
        let flat = match h.kind() {
            // A gather only copies: 16-bit floats (a sharded run's bf16 weights) travel as
            // their bits.
            kind @ (Kind::BFloat16 | Kind::Half) => {
                let mut bits = h.view_dtype(Kind::Int16);
                all_gather_typed::<i16>(&self.world, &mut bits, self.size)?.view_dtype(kind)
            }
            _ => by_kind!(
                h,
                "all_gather",
                all_gather_typed(&self.world, &mut h, self.size)
            )?,
        };
        let mut shape = local.size();
        if shape.is_empty() {
            shape = vec![self.size as i64];
        } else {
            shape[0] *= self.size as i64;
        }
        Ok(flat.view(shape.as_slice()))
    }

    fn reduce_scatter_sum(&self, tensor: &Tensor) -> Result<Tensor> {
        let shape = tensor.size();
        if shape.is_empty() || shape[0] % self.size as i64 != 0 {
            return Err(FlowError::Collective(format!(
                "reduce_scatter: dim 0 of {shape:?} does not split into {} ranks",
                self.size
            )));
        }
        let mut h = host(tensor, "reduce_scatter")?;
        let flat = by_kind!(
            h,
            "reduce_scatter",
            reduce_scatter_typed(&self.world, &mut h, self.size)
        )?;
        let mut out_shape = shape;
        out_shape[0] /= self.size as i64;
        Ok(flat.view(out_shape.as_slice()))
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }
}

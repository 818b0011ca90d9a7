//! [`Collective`] on libtorch's c10d (torch.distributed's engine), through the C shim in
//! `csrc/c10d_shim.cpp`: a `TCPStore` rendezvous at torchrun's `MASTER_ADDR:MASTER_PORT`
//! (torchrun's own agent store when it runs one) and a process group behind the same calls —
//! Gloo for CPU tensors, NCCL for CUDA tensors (in builds against a CUDA libtorch: see
//! [`nccl_available`]). Tensors go to c10d as they are (no copies through host buffers); an
//! NCCL group moves the loop's few host scalars to its GPU and back. NCCL work is queued on
//! the current CUDA stream's order without a host synchronisation.

use std::ffi::{c_char, c_int, c_void, CStr, CString};

use apt_flow::train::{Collective, Pending};
use apt_flow::{FlowError, Result};
use tch::{Device, Tensor};

extern "C" {
    fn apt_c10d_free_error(err: *mut c_char);
    #[allow(clippy::too_many_arguments)]
    fn apt_c10d_gloo_new(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_s: c_int,
        agent_store: c_int,
        group: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn apt_c10d_has_nccl() -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn apt_c10d_nccl_new(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_s: c_int,
        agent_store: c_int,
        device: c_int,
        group: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn apt_c10d_free(group: *mut c_void);
    fn apt_c10d_all_reduce_sum(group: *mut c_void, t: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn apt_c10d_broadcast(
        group: *mut c_void,
        t: *mut c_void,
        root: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn apt_c10d_reduce_scatter_sum(
        group: *mut c_void,
        out: *mut c_void,
        input: *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn apt_c10d_barrier(group: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn apt_c10d_all_gather_start(
        group: *mut c_void,
        out: *mut c_void,
        local: *mut c_void,
        pending: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn apt_c10d_pending_wait(pending: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn apt_c10d_pending_free(pending: *mut c_void);
}

/// An all-gather c10d runs while the caller computes; it owns the tensors c10d writes and
/// reads until it is waited for (dropping it waits too).
struct C10dPending {
    work: *mut c_void,
    out: Tensor,
    _local: Tensor,
    home: Device,
}

impl C10dPending {
    fn finish(&mut self) -> Result<()> {
        if self.work.is_null() {
            return Ok(());
        }
        let work = std::mem::replace(&mut self.work, std::ptr::null_mut());
        let waited = call("all_gather", |err| unsafe {
            apt_c10d_pending_wait(work, err)
        });
        // SAFETY: `work` came from apt_c10d_all_gather_start and is freed once.
        unsafe { apt_c10d_pending_free(work) };
        waited
    }
}

impl Pending for C10dPending {
    fn wait(mut self: Box<Self>) -> Result<Tensor> {
        self.finish()?;
        Ok(self.out.to_device(self.home))
    }
}

impl Drop for C10dPending {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Runs a shim call and turns its error message into a [`FlowError::Collective`].
fn call(what: &str, f: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<()> {
    let mut err: *mut c_char = std::ptr::null_mut();
    if f(&mut err) == 0 {
        return Ok(());
    }
    let message = if err.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: the shim returns a NUL-terminated malloc'ed string, freed right after.
        let text = unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned();
        unsafe { apt_c10d_free_error(err) };
        text
    };
    let first = message.lines().next().unwrap_or_default();
    Err(FlowError::Collective(format!("c10d {what}: {first}")))
}

/// Whether this build of apt has NCCL process groups (it was built against a CUDA libtorch
/// with the CUDA and NCCL headers `cargo xtask setup` installs).
pub fn nccl_available() -> bool {
    // SAFETY: a constant query.
    unsafe { apt_c10d_has_nccl() == 1 }
}

/// A c10d process group: Gloo (CPU tensors) or NCCL (CUDA tensors on one GPU).
pub struct C10dCollective {
    group: *mut c_void,
    rank: usize,
    size: usize,
    /// Where its tensors live: the CPU (Gloo) or this rank's GPU (NCCL).
    device: Device,
}

impl std::fmt::Debug for C10dCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "C10dCollective {{ rank: {}, size: {} }}",
            self.rank, self.size
        )
    }
}

impl Drop for C10dCollective {
    fn drop(&mut self) {
        // SAFETY: `group` came from apt_c10d_gloo_new / apt_c10d_nccl_new and is freed once.
        unsafe { apt_c10d_free(self.group) }
    }
}

impl C10dCollective {
    /// Joins `world` ranks as `rank` through the store at `host:port` and builds a Gloo group;
    /// `agent_store` when torchrun's agent already serves the store there
    /// (`TORCHELASTIC_USE_AGENT_STORE=True`). Waits up to `timeout_s` for the others.
    pub fn gloo(
        host: &str,
        port: u16,
        rank: usize,
        world: usize,
        agent_store: bool,
        timeout_s: u32,
    ) -> Result<Self> {
        Self::join(host, port, rank, world, agent_store, timeout_s, Device::Cpu)
    }

    /// [`Self::gloo`] with an NCCL group on CUDA device `gpu` (torchrun's `LOCAL_RANK`),
    /// which becomes the current device. An error in a build without NCCL.
    pub fn nccl(
        host: &str,
        port: u16,
        rank: usize,
        world: usize,
        agent_store: bool,
        timeout_s: u32,
        gpu: usize,
    ) -> Result<Self> {
        Self::join(
            host,
            port,
            rank,
            world,
            agent_store,
            timeout_s,
            Device::Cuda(gpu),
        )
    }

    fn join(
        host: &str,
        port: u16,
        rank: usize,
        world: usize,
        agent_store: bool,
        timeout_s: u32,
        device: Device,
    ) -> Result<Self> {
        let host_c = CString::new(host)
            .map_err(|_| FlowError::Collective(format!("MASTER_ADDR {host:?} holds a NUL")))?;
        let mut group: *mut c_void = std::ptr::null_mut();
        call("rendezvous", |err| unsafe {
            match device {
                Device::Cuda(gpu) => apt_c10d_nccl_new(
                    host_c.as_ptr(),
                    port as c_int,
                    rank as c_int,
                    world as c_int,
                    timeout_s as c_int,
                    agent_store as c_int,
                    gpu as c_int,
                    &mut group,
                    err,
                ),
                _ => apt_c10d_gloo_new(
                    host_c.as_ptr(),
                    port as c_int,
                    rank as c_int,
                    world as c_int,
                    timeout_s as c_int,
                    agent_store as c_int,
                    &mut group,
                    err,
                ),
            }
        })
        .map_err(|e| {
            let reason = match e {
                FlowError::Collective(m) => m.trim_start_matches("c10d rendezvous: ").to_string(),
                other => other.to_string(),
            };
            FlowError::Collective(format!(
                "rank {rank} of {world} could not join the store at {host}:{port} within \
                 {timeout_s} s (dist.timeout_s): {reason}"
            ))
        })?;
        Ok(Self {
            group,
            rank,
            size: world,
            device,
        })
    }

    /// `t` contiguous on the group's device: Gloo takes CPU tensors only (an error naming
    /// the operation otherwise); NCCL takes this GPU's, and moves host tensors there.
    fn on_device(&self, t: &Tensor, what: &str) -> Result<Tensor> {
        match (self.device, t.device()) {
            (Device::Cpu, Device::Cpu) => Ok(t.contiguous()),
            (Device::Cpu, other) => Err(FlowError::Collective(format!(
                "{what}: the Gloo backend reduces CPU tensors, got one on {other:?} (NCCL is \
                 for GPUs)"
            ))),
            (gpu, Device::Cpu) => Ok(t.to_device(gpu).contiguous()),
            (gpu, other) if gpu == other => Ok(t.contiguous()),
            (gpu, other) => Err(FlowError::Collective(format!(
                "{what}: this rank's NCCL group is on {gpu:?}, the tensor on {other:?}"
            ))),
        }
    }
}

impl Collective for C10dCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.size
    }

    fn backend(&self) -> &str {
        match self.device {
            Device::Cpu => "gloo",
            _ => "nccl",
        }
    }

    fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<()> {
        let mut t = self.on_device(tensor, "all_reduce")?;
        call("all_reduce", |err| unsafe {
            apt_c10d_all_reduce_sum(self.group, t.as_mut_ptr() as *mut c_void, err)
        })?;
        if t.data_ptr() != tensor.data_ptr() {
            tensor.copy_(&t);
        }
        Ok(())
    }

    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<()> {
        let mut t = self.on_device(tensor, "broadcast")?;
        call("broadcast", |err| unsafe {
            apt_c10d_broadcast(
                self.group,
                t.as_mut_ptr() as *mut c_void,
                root as c_int,
                err,
            )
        })?;
        if t.data_ptr() != tensor.data_ptr() {
            tensor.copy_(&t);
        }
        Ok(())
    }

    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        self.all_gather_start(local)?.wait()
    }

    fn reduce_scatter_sum(&self, tensor: &Tensor) -> Result<Tensor> {
        let home = tensor.device();
        let mut input = self.on_device(tensor, "reduce_scatter")?;
        let mut shape = input.size();
        if shape[0] % self.size as i64 != 0 {
            return Err(FlowError::Collective(format!(
                "reduce_scatter: dim 0 ({}) does not split into {} ranks",
                shape[0], self.size
            )));
        }
        shape[0] /= self.size as i64;
        let mut out = Tensor::empty(&shape, (input.kind(), self.device));
        call("reduce_scatter", |err| unsafe {
            apt_c10d_reduce_scatter_sum(
                self.group,
                out.as_mut_ptr() as *mut c_void,
                input.as_mut_ptr() as *mut c_void,
                err,
            )
        })?;
        Ok(out.to_device(home))
    }

    fn barrier(&self) -> Result<()> {
        call("barrier", |err| unsafe {
            apt_c10d_barrier(self.group, err)
        })
    }

    fn all_gather_start(&self, local: &Tensor) -> Result<Box<dyn Pending>> {
        let home = local.device();
        let mut local = self.on_device(local, "all_gather")?;
        if local.dim() == 0 {
            local = local.reshape([1]);
        }
        let mut shape = local.size();
        shape[0] *= self.size as i64;
        let mut out = Tensor::empty(&shape, (local.kind(), self.device));
        let mut work: *mut c_void = std::ptr::null_mut();
        call("all_gather", |err| unsafe {
            apt_c10d_all_gather_start(
                self.group,
                out.as_mut_ptr() as *mut c_void,
                local.as_mut_ptr() as *mut c_void,
                &mut work,
                err,
            )
        })?;
        Ok(Box::new(C10dPending {
            work,
            out,
            _local: local,
            home,
        }))
    }
}

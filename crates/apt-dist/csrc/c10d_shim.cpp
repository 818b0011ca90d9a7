// A thin C ABI over libtorch's c10d (torch.distributed's engine): a TCPStore rendezvous and a
// Gloo (CPU) or NCCL (CUDA) process group behind the same calls. Tensors are tch's
// `at::Tensor*`. Every function returns 0 on success, or 1 with a malloc'ed message in *err
// (freed by apt_c10d_free_error).

#include <cstdlib>
#include <cstring>
#include <string>

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef APT_WITH_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

int fail(char** err, const std::string& message) {
  if (err != nullptr) {
    *err = static_cast<char*>(std::malloc(message.size() + 1));
    std::memcpy(*err, message.c_str(), message.size() + 1);
  }
  return 1;
}

template <typename F>
int guarded(char** err, F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    return fail(err, e.what_without_backtrace());
  } catch (const std::exception& e) {
    return fail(err, e.what());
  }
}

// Gloo: returns when the operation is done. NCCL: makes the current CUDA stream wait for it
// (no host synchronisation).
void wait(const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait();
}

// The TCPStore at host:port (rank 0 serves it unless `agent_store`, torchrun's own store,
// already runs there), under the prefix `apt-rs/`.
c10::intrusive_ptr<c10d::Store> make_store(const char* host, int port, int rank, int world,
                                           std::chrono::milliseconds timeout,
                                           int agent_store) {
  c10d::TCPStoreOptions opts;
  opts.port = static_cast<std::uint16_t>(port);
  opts.isServer = rank == 0 && agent_store == 0;
  opts.numWorkers = agent_store == 0 ? std::optional<std::size_t>(world) : std::nullopt;
  opts.waitWorkers = agent_store == 0;
  opts.timeout = timeout;
  auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
  return c10::make_intrusive<c10d::PrefixStore>("apt-rs/", tcp);
}

}  // namespace

extern "C" {

void apt_c10d_free_error(char* err) { std::free(err); }

// Joins `world` ranks through the TCPStore at host:port and builds a Gloo group.
int apt_c10d_gloo_new(const char* host, int port, int rank, int world, int timeout_s,
                      int agent_store, void** group, char** err) {
  return guarded(err, [&] {
    auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s) * 1000);
    auto store = make_store(host, port, rank, world, timeout, agent_store);
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    *group = new Group{store, backend};
  });
}

// Whether this build has NCCL groups (built against a CUDA libtorch with NCCL's headers).
int apt_c10d_has_nccl() {
#ifdef APT_WITH_NCCL
  return 1;
#else
  return 0;
#endif
}

// Joins `world` ranks through the TCPStore at host:port and builds an NCCL group on CUDA
// device `device` (torchrun's LOCAL_RANK), which becomes the current device.
int apt_c10d_nccl_new(const char* host, int port, int rank, int world, int timeout_s,
                      int agent_store, int device, void** group, char** err) {
#ifdef APT_WITH_NCCL
  return guarded(err, [&] {
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s) * 1000);
    auto store = make_store(host, port, rank, world, timeout, agent_store);
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = timeout;
    auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
    *group = new Group{store, backend};
  });
#else
  (void)host, (void)port, (void)rank, (void)world, (void)timeout_s, (void)agent_store,
      (void)device, (void)group;
  return fail(err, "this build of apt has no NCCL (built against a libtorch without CUDA)");
#endif
}

void apt_c10d_free(void* group) { delete static_cast<Group*>(group); }

int apt_c10d_all_reduce_sum(void* group, at::Tensor* t, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> tensors{*t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    wait(static_cast<Group*>(group)->backend->allreduce(tensors, opts));
  });
}

int apt_c10d_broadcast(void* group, at::Tensor* t, int root, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> tensors{*t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    wait(static_cast<Group*>(group)->backend->broadcast(tensors, opts));
  });
}

// Starts `out` [world·n, …] ← every rank's `local` [n, …] in rank order, without waiting for
// it (apt_c10d_pending_wait right after is the blocking all-gather): `*pending` is waited for (and
// freed) by apt_c10d_pending_wait / apt_c10d_pending_free; the tensors must live until then.
// Gloo runs it on its own threads, NCCL on its stream: the caller computes meanwhile.
int apt_c10d_all_gather_start(void* group, at::Tensor* out, at::Tensor* local, void** pending,
                              char** err) {
  return guarded(err, [&] {
    auto work = static_cast<Group*>(group)->backend->_allgather_base(*out, *local);
    *pending = new c10::intrusive_ptr<c10d::Work>(work);
  });
}

int apt_c10d_pending_wait(void* pending, char** err) {
  return guarded(err, [&] { wait(*static_cast<c10::intrusive_ptr<c10d::Work>*>(pending)); });
}

void apt_c10d_pending_free(void* pending) {
  delete static_cast<c10::intrusive_ptr<c10d::Work>*>(pending);
}

// `out` [n/world, …] ← this rank's chunk of Σ_r input_r.
int apt_c10d_reduce_scatter_sum(void* group, at::Tensor* out, at::Tensor* input, char** err) {
  return guarded(err, [&] {
    c10d::ReduceScatterOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    wait(static_cast<Group*>(group)->backend->_reduce_scatter_base(*out, *input, opts));
  });
}

int apt_c10d_barrier(void* group, char** err) {
  return guarded(err, [&] { wait(static_cast<Group*>(group)->backend->barrier()); });
}

}  // extern "C"

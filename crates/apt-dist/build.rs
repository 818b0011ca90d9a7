//! Links libtorch (rpath) and compiles the c10d shim (`csrc/c10d_shim.cpp`) against the same
//! libtorch as `tch` (its headers and C++ ABI). The PyTorch wheel ships c10d's headers but
//! not Gloo's: those come from the system (`libgloo-dev`, installed by `cargo xtask setup`).

use std::path::PathBuf;

fn main() {
    apt_build::link_libtorch();
    println!("cargo:rerun-if-changed=csrc/c10d_shim.cpp");
    let lib = PathBuf::from(std::env::var_os("DEP_TCH_LIBTORCH_LIB").expect("set by torch-sys"));
    let root = lib
        .parent()
        .expect("libtorch's lib/ has a parent")
        .to_path_buf();
    let include = root.join("include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .file("csrc/c10d_shim.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .warnings(false);
    let nccl = nccl_headers(&lib);
    if let Some(dirs) = &nccl {
        for dir in dirs {
            build.include(dir);
        }
        build
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            .define("APT_WITH_NCCL", None);
    }
    build.compile("apt_c10d_shim");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if nccl.is_some() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
}

/// NCCL groups need a CUDA libtorch (`libtorch_cuda.so`) and the CUDA runtime's and NCCL's
/// headers: the PyTorch wheel's `nvidia-*` dependencies ship most of them next to it
/// (`site-packages/nvidia/{cu13,nccl}/include`), `cargo xtask setup` adds the toolkit's
/// `crt/` and CCCL's `nv/`. The include directories when all are there (`APT_RS_NO_NCCL=1`
/// builds without).
fn nccl_headers(lib: &std::path::Path) -> Option<Vec<PathBuf>> {
    println!("cargo:rerun-if-env-changed=APT_RS_NO_NCCL");
    if std::env::var_os("APT_RS_NO_NCCL").is_some() || !lib.join("libtorch_cuda.so").is_file() {
        return None;
    }
    let nvidia = std::fs::canonicalize(lib)
        .ok()?
        .parent()?
        .parent()?
        .join("nvidia");
    let nccl = nvidia.join("nccl/include");
    let cuda = ["cu13", "cu12", "cuda_runtime"]
        .iter()
        .map(|d| nvidia.join(d).join("include"))
        .find(|d| d.join("cuda_runtime_api.h").is_file())?;
    // Rebuild once `cargo xtask setup` adds the toolkit's headers (`crt/`, `nv/`).
    println!("cargo:rerun-if-changed={}", cuda.display());
    let complete = nccl.join("nccl.h").is_file()
        && cuda.join("crt/host_config.h").is_file()
        && cuda.join("nv/target").is_file();
    complete.then(|| vec![cuda, nccl])
}

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
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("csrc/c10d_shim.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .warnings(false)
        .compile("apt_c10d_shim");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

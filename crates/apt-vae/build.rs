fn main() {
    apt_build::link_libtorch();
}

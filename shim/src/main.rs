//! `containerd-shim-vessel-v2`: containerd's runtime `io.containerd.vessel.v2`.
fn main() {
    std::process::exit(containerd_shim_vessel_v2::bootstrap::run());
}

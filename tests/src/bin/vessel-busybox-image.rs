//! `vessel-busybox-image OUT_DIR`: writes the busybox-static OCI image the tests use (as an
//! OCI layout tar for `ctr images import`) and prints the tar's path. Used by the demo.
fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: vessel-busybox-image OUT_DIR"))?;
    let tar = vessel_tests::containerd::build_busybox_oci_tar(std::path::Path::new(&out))?;
    println!("{}", tar.display());
    Ok(())
}

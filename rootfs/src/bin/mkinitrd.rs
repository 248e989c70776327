//! `vessel-mkinitrd --agent PATH --out PATH`: writes the guest initramfs.
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Build vessel's guest initramfs (uncompressed cpio newc, agent as /init)")]
struct Args {
    /// Statically linked vessel-agent binary.
    #[arg(long)]
    agent: PathBuf,
    /// Output archive.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = vessel_rootfs::build_initrd(&args.agent, &args.out)?;
    println!("{} ({size} bytes)", args.out.display());
    Ok(())
}

//! Direct Linux boot: kernel and initrd loading, zero page / PVH start info, command line.

pub mod cmdline;
pub mod loader;
pub mod params;
pub mod pvh;

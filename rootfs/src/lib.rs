//! builds vessel's guest initramfs (cpio newc) with the agent as /init

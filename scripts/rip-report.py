#!/usr/bin/env python3
"""Summarise a `vessel-vmm --profile-rips FILE` histogram by guest kernel function.

    scripts/rip-report.py SYSTEM_MAP RIPS [TOP]

SYSTEM_MAP is the guest kernel's System.map (next to vmlinux in the kernel cache). Prints the
TOP functions (default 40) and a rough split by subsystem (name patterns, first match wins),
so a cut can be aimed at the biggest share. User-mode RIPs are counted as `<user>`.
"""
import bisect
import collections
import re
import sys

CATEGORIES = [
    ("scheduler load tracking (PELT) / CFS",
     r"load_avg|decay_load|pelt|update_curr|cfs|reweight|vruntime|task_tick_fair|entity|"
     r"sched_slice|task_of|update_tg|fair|update_rq_clock|cpufreq_update_util|assert_clock"),
    ("tick, timers, timekeeping",
     r"timekeep|clocksource|pvclock|kvm_clock|hrtimer|tick_|tk_|ktime|update_vsyscall|"
     r"fast_timekeeper|jiffies|accumulate_nsecs|clockevents|timer|account_|rcu_sched_clock|"
     r"scheduler_tick|update_process_times|calc_global"),
    ("scheduler core", r"schedule|switch|pick_next|enqueue|dequeue|wake|activate|select_task|"
     r"resched|finish_task|prepare_task|idle|balance|migrat"),
    ("memory", r"page|pte|pmd|pud|vma|mmap|unmap|xas_|xa_|folio|lru|memcg|mem_cgroup|rmap|anon|"
     r"fault|zap|tlb|mm_|alloc_pages|free_|copy_user|clear_user|kmem|slab|cache_alloc|rstat|"
     r"lruvec|pgd|filemap|compound_head|percpu|pcpu"),
    ("files, paths, mounts", r"fuse|dentry|d_|path|inode|namei|lookup|vfs|mount|mnt|file|open|"
     r"link_path|walk_component|proc_|kernfs|sysfs|seq_|iput|dput|super|pipe|shmem|xattr"),
    ("entry, exceptions", r"entry|syscall|swapgs|error_entry|irq|sync_regs|asm_|exc_|"
     r"restore_regs|ret_from"),
    ("locks, RCU", r"spin|lock|rcu|mutex|atomic|refcount"),
    ("network, vsock, virtio", r"tcp|net|sock|skb|vsock|virtio|vring|inet|udp|ip_|neigh|fib"),
    ("random", r"blake|random|crng|chacha"),
]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    symbols = []
    with open(sys.argv[1]) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1].lower() in ("t", "w"):
                symbols.append((int(parts[0], 16), parts[2]))
    symbols.sort()
    addrs = [a for a, _ in symbols]
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    by_fn = collections.Counter()
    total = 0
    with open(sys.argv[2]) as f:
        for line in f:
            count, rip = line.split()
            count, rip = int(count), int(rip, 16)
            total += count
            if rip < 0xFFFF800000000000:
                by_fn["<user>"] += count
                continue
            i = bisect.bisect_right(addrs, rip) - 1
            by_fn[symbols[i][1] if i >= 0 else "?"] += count
    if total == 0:
        sys.exit("no samples")
    print(f"{total} samples")
    for name, count in by_fn.most_common(top):
        print(f"{count:7d} {100 * count / total:5.1f}%  {name}")
    by_cat = collections.Counter()
    for name, count in by_fn.items():
        cat = next((c for c, rx in CATEGORIES if re.search(rx, name)), "other")
        by_cat[cat] += count
    print("\nby subsystem (name patterns):")
    for cat, count in by_cat.most_common():
        print(f"{count:7d} {100 * count / total:5.1f}%  {cat}")


if __name__ == "__main__":
    main()

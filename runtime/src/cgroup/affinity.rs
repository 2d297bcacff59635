//! vCPU pinning: which CPU each vCPU thread may run on, and applying it.
//!
//! Rule: when the number of vCPUs equals the number of CPUs in the allowed
//! set (the sandbox cpuset), vCPU *i* is pinned to the *i*-th CPU of the
//! set; otherwise pinning is cleared (affinity = the whole allowed set).
//! The plan is a pure function so it can be tested against two known Kata
//! bugs: every vCPU pinned to CPU 0 (the set's *position* used as the CPU
//! number, or the first CPU reused), and pinning silently skipped (errors
//! ignored). Here every `sched_setaffinity` error is returned, and the
//! affinity is read back and compared, so a narrowed or ignored mask is an
//! error too.
//!
//! Pinning must follow cgroup placement: attaching a thread to a v1 cpuset
//! resets its affinity to the cpuset's CPUs.

use std::io;

use super::error::CgroupError;

/// Capacity of a `cpu_set_t` (glibc's `CPU_SETSIZE`).
const MAX_CPUS: usize = 1024;
/// A `cpu_set_t`-compatible mask: 1024 bits in 64-bit words.
type Mask = [u64; MAX_CPUS / 64];

/// What was done with vCPU affinity in one placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinDecision {
    /// vCPU *i* runs only on the *i*-th allowed CPU.
    Pinned,
    /// Every vCPU may run on the whole allowed set.
    Unpinned,
    /// Pinning is disabled in the configuration; affinity untouched.
    NotManaged,
}

/// The affinity of each vCPU (by index) for `vcpus` vCPUs and the allowed
/// set `allowed` (sorted, deduplicated CPU numbers).
pub(crate) fn pin_plan(vcpus: usize, allowed: &[u32]) -> (PinDecision, Vec<Vec<u32>>) {
    if vcpus > 0 && vcpus == allowed.len() {
        let plan = allowed.iter().map(|&cpu| vec![cpu]).collect();
        (PinDecision::Pinned, plan)
    } else {
        (PinDecision::Unpinned, vec![allowed.to_vec(); vcpus])
    }
}

/// Parses a kernel CPU list (`0-3,8,10-11`) into sorted, unique CPU numbers.
pub(crate) fn parse_cpu_list(list: &str) -> Result<Vec<u32>, String> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.trim().is_empty()) {
        let part = part.trim();
        let (start, end) = match part.split_once('-') {
            Some((a, b)) => (parse_cpu(a, list)?, parse_cpu(b, list)?),
            None => {
                let cpu = parse_cpu(part, list)?;
                (cpu, cpu)
            }
        };
        if start > end {
            return Err(format!("descending range {part:?} in CPU list {list:?}"));
        }
        if end as usize >= MAX_CPUS {
            return Err(format!("CPU {end} in {list:?} exceeds {MAX_CPUS}"));
        }
        cpus.extend(start..=end);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

fn parse_cpu(s: &str, list: &str) -> Result<u32, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a CPU number in CPU list {list:?}"))
}

fn to_mask(cpus: &[u32]) -> Result<Mask, CgroupError> {
    let mut mask: Mask = [0; MAX_CPUS / 64];
    for &cpu in cpus {
        let index = cpu as usize;
        if index >= MAX_CPUS {
            return Err(CgroupError::CpuOutOfRange { cpu, max: MAX_CPUS });
        }
        mask[index / 64] |= 1u64 << (index % 64);
    }
    Ok(mask)
}

fn from_mask(mask: &Mask) -> Vec<u32> {
    (0..MAX_CPUS)
        .filter(|&i| mask[i / 64] & (1u64 << (i % 64)) != 0)
        .filter_map(|i| u32::try_from(i).ok())
        .collect()
}

/// Sets the affinity of thread `tid` to exactly `cpus`, then reads it back
/// and fails if the kernel kept a different set.
pub(crate) fn apply_affinity(tid: i32, cpus: &[u32]) -> Result<(), CgroupError> {
    let mask = to_mask(cpus)?;
    set_thread_affinity(tid, &mask).map_err(|source| CgroupError::Affinity {
        op: "set",
        tid,
        cpus: cpus.to_vec(),
        source,
    })?;
    let actual = thread_affinity(tid)?;
    if actual != cpus {
        return Err(CgroupError::AffinityNotApplied {
            tid,
            wanted: cpus.to_vec(),
            actual,
        });
    }
    Ok(())
}

/// The CPUs thread `tid` may run on.
pub(crate) fn thread_affinity(tid: i32) -> Result<Vec<u32>, CgroupError> {
    get_thread_affinity(tid)
        .map(|mask| from_mask(&mask))
        .map_err(|source| CgroupError::Affinity {
            op: "get",
            tid,
            cpus: Vec::new(),
            source,
        })
}

fn set_thread_affinity(tid: i32, mask: &Mask) -> io::Result<()> {
    // SAFETY: `mask` is a live, initialised 128-byte buffer with the layout
    // of `cpu_set_t` (an array of unsigned longs), and the size passed is
    // exactly its size; the kernel only reads from it.
    let rc = unsafe {
        libc::sched_setaffinity(
            tid,
            std::mem::size_of::<Mask>(),
            mask.as_ptr().cast::<libc::cpu_set_t>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_thread_affinity(tid: i32) -> io::Result<Mask> {
    let mut mask: Mask = [0; MAX_CPUS / 64];
    // SAFETY: `mask` is a writable 128-byte buffer with the layout of
    // `cpu_set_t`, the size passed is exactly its size, and it outlives the
    // call; the kernel writes at most that many bytes.
    let rc = unsafe {
        libc::sched_getaffinity(
            tid,
            std::mem::size_of::<Mask>(),
            mask.as_mut_ptr().cast::<libc::cpu_set_t>(),
        )
    };
    if rc == 0 {
        Ok(mask)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_counts_pin_each_vcpu_to_a_distinct_cpu_of_the_set() {
        // A set that does not start at 0: catches "position used as CPU".
        let (decision, plan) = pin_plan(3, &[2, 5, 7]);
        assert_eq!(decision, PinDecision::Pinned);
        assert_eq!(plan, vec![vec![2], vec![5], vec![7]]);
        let mut firsts: Vec<u32> = plan.iter().map(|c| c[0]).collect();
        firsts.dedup();
        assert_eq!(firsts.len(), 3, "vCPUs share a CPU: {plan:?}");
    }

    #[test]
    fn unequal_counts_clear_pinning_to_the_whole_set() {
        let (decision, plan) = pin_plan(2, &[0, 1, 2, 3]);
        assert_eq!(decision, PinDecision::Unpinned);
        assert_eq!(plan, vec![vec![0, 1, 2, 3]; 2]);
        let (decision, plan) = pin_plan(4, &[0, 1]);
        assert_eq!(decision, PinDecision::Unpinned);
        assert_eq!(plan.len(), 4);
        let (decision, plan) = pin_plan(0, &[]);
        assert_eq!(decision, PinDecision::Unpinned);
        assert!(plan.is_empty());
    }

    #[test]
    fn cpu_lists_parse_ranges_and_singles() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("5").unwrap(), vec![5]);
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<u32>::new());
        assert_eq!(parse_cpu_list("1,1,0").unwrap(), vec![0, 1]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("0-5000").is_err());
    }

    #[test]
    fn masks_round_trip() {
        let cpus = vec![0, 63, 64, 1023];
        assert_eq!(from_mask(&to_mask(&cpus).unwrap()), cpus);
        assert!(to_mask(&[1024]).is_err());
    }

    #[test]
    fn own_affinity_round_trips() {
        let tid = std::process::id() as i32;
        let mine = thread_affinity(tid).unwrap();
        assert!(!mine.is_empty());
    }
}

//! How the node's threads share the cores (Linux scheduling policy).
//!
//! A node's Sphinx workers are busy for ~125 µs a packet; its QUIC and
//! tokio threads wake thousands of times a second for a few µs each. Under
//! the normal policy every such wake-up preempts a worker: two context
//! switches and a cold cache for a few µs of work. As `SCHED_BATCH` the I/O
//! threads do not preempt on wake-up; they run when a core is free or at
//! the next scheduler tick, and then handle everything that arrived since.
//! Measured at the defaults (`umbra bench mixnode`, the node and its load
//! generator then sharing two cores): the node's QUIC/tokio CPU per
//! packet fell from 13.6 to 7.4–9.6 µs, its threads' runs per packet from
//! 0.33 to 0.06–0.07, the ratio to the raw unwrap from 0.80 to 0.84
//! (docs/performance.md). What it could cost: under full load
//! a packet may wait for a tick before it is read or written; the latency
//! the node adds at 10 and 50 % of its rate did not change. An idle core
//! runs an I/O thread at once.
//!
//! Changing between `SCHED_OTHER` and `SCHED_BATCH` needs no privilege and
//! keeps the thread's nice value. Elsewhere than Linux these do nothing.
//!
//! [`pin`] keeps a thread on some CPUs only: `umbra bench mixnode` uses it
//! to give its load generator a core the node does not share, as on a
//! machine that is the node's own.

/// Makes the calling thread `SCHED_BATCH`: for I/O runtimes (set it from
/// tokio's `on_thread_start`). Threads it spawns inherit the policy.
pub fn io_thread() {
    set(Policy::Batch);
}

/// Makes the calling thread `SCHED_OTHER`, the normal policy: for threads
/// that do the CPU work (the Sphinx workers), whichever thread spawned them.
pub fn cpu_thread() {
    set(Policy::Normal);
}

enum Policy {
    Batch,
    Normal,
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set(policy: Policy) {
    let policy = match policy {
        Policy::Batch => libc::SCHED_BATCH,
        Policy::Normal => libc::SCHED_OTHER,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain system call on the calling thread (id 0) with a valid,
    // initialised `sched_param` that outlives the call.
    let r = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot set the thread's scheduling policy");
    }
}

#[cfg(not(target_os = "linux"))]
fn set(_policy: Policy) {}

/// The CPUs in a Linux CPU list (`Cpus_allowed_list`, `/sys/…/online`:
/// `0-3,6`); `None` if it is empty or malformed.
pub fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// Lets thread `tid` of this process (0: the calling thread) run only on
/// `cpus`. Threads it spawns afterwards inherit the set.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn pin(tid: i32, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: `cpu_set_t` is plain data (all zeroes is the empty set);
    // CPU_SET writes within it for indices below CPU_SETSIZE, checked first.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::other(format!("no CPU {c}")));
        }
        // SAFETY: `c` is below CPU_SETSIZE (checked above).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: a plain system call with a valid, initialised set that
    // outlives it and its exact size.
    let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Elsewhere than Linux threads cannot be pinned.
#[cfg(not(target_os = "linux"))]
pub fn pin(_tid: i32, _cpus: &[usize]) -> std::io::Result<()> {
    Err(std::io::Error::other("pinning threads needs Linux"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's policy is `SCHED_BATCH`.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn is_io_thread() -> bool {
        // SAFETY: a plain system call on the calling thread, no pointers.
        unsafe { libc::sched_getscheduler(0) == libc::SCHED_BATCH }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_goes_to_batch_and_back_and_its_children_inherit() {
        std::thread::spawn(|| {
            cpu_thread();
            assert!(!is_io_thread());
            io_thread();
            assert!(is_io_thread());
            let child = std::thread::spawn(is_io_thread).join().unwrap_or(false);
            assert!(
                child,
                "a thread spawned by an I/O thread inherits its policy"
            );
            let worker = std::thread::spawn(|| {
                cpu_thread();
                is_io_thread()
            })
            .join()
            .unwrap_or(true);
            assert!(!worker, "cpu_thread puts it back to normal");
            cpu_thread();
            assert!(!is_io_thread());
        })
        .join()
        .expect("thread");
    }

    /// The CPUs the calling thread may run on, as Linux lists them.
    #[cfg(target_os = "linux")]
    fn allowed() -> String {
        let s = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_pinned_thread_and_its_children_stay_on_its_cpus_until_unpinned() {
        std::thread::spawn(|| {
            let all = allowed();
            let cpus = parse_cpu_list(&all).expect("a CPU list");
            let first = cpus[0];
            pin(0, &[first]).expect("pin to one CPU");
            assert_eq!(allowed(), first.to_string());
            let child = std::thread::spawn(allowed).join().unwrap_or_default();
            assert_eq!(child, first.to_string(), "a child inherits the set");
            let bad = pin(0, &[libc::CPU_SETSIZE as usize]);
            assert!(bad.is_err(), "no such CPU");
            assert_eq!(
                allowed(),
                first.to_string(),
                "a refused pin changes nothing"
            );
            pin(0, &cpus).expect("unpin");
            assert_eq!(allowed(), all);
        })
        .join()
        .expect("thread");
    }
}

//! How the node's threads share the cores (Linux scheduling policy).
//!
//! A node's Sphinx workers are busy for ~125 µs a packet; its QUIC and
//! tokio threads wake thousands of times a second for a few µs each. All of
//! them run as `SCHED_BATCH`: a batch thread that wakes does not preempt the
//! thread on its core; it runs on a free core at once, or when the running
//! thread blocks or its slice ends, and then handles everything that
//! arrived since.
//!
//! - The I/O threads, because under the normal policy every wake-up
//!   preempted a worker: two context switches and a cold cache for a few µs
//!   of work. Measured at the defaults (`umbra bench mixnode`, the node and
//!   its load generator then sharing two cores): the node's QUIC/tokio CPU
//!   per packet fell from 13.6 to 7.4–9.6 µs, its threads' runs per packet
//!   from 0.33 to 0.06–0.07 (docs/performance.md).
//! - The workers, because under the normal policy a worker woken by a new
//!   job may take the core from the I/O thread that queued it, before that
//!   thread has queued the rest of what it read. As batch, the worker
//!   waits until the I/O thread blocks or its slice ends, then takes the
//!   whole batch. How many packets a batch holds is still set by how they
//!   arrive: where the senders' pacing keeps the node's queue short, a
//!   core the two share hands over a few packets at a time under either
//!   policy (docs/performance.md).
//!
//! What it could cost: under full load a packet may wait for a running
//! thread's slice (a few ms) before it is read, peeled or written. An idle
//! core runs a woken thread at once, so at low load nothing changes.
//! Threads of other programs under the normal policy do preempt the node's.
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

/// Makes the calling thread `SCHED_BATCH`: for the Sphinx workers, whatever
/// spawned them (see the module's docs for why not the normal policy).
pub fn worker_thread() {
    set(Policy::Batch);
}

enum Policy {
    Batch,
    /// The normal policy: only the tests go back to it.
    #[cfg(all(test, target_os = "linux"))]
    Normal,
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set(policy: Policy) {
    let policy = match policy {
        Policy::Batch => libc::SCHED_BATCH,
        #[cfg(all(test, target_os = "linux"))]
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
    fn is_batch() -> bool {
        // SAFETY: a plain system call on the calling thread, no pointers.
        unsafe { libc::sched_getscheduler(0) == libc::SCHED_BATCH }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn io_and_worker_threads_are_batch_and_their_children_inherit() {
        std::thread::spawn(|| {
            set(Policy::Normal);
            assert!(!is_batch());
            io_thread();
            assert!(is_batch());
            let child = std::thread::spawn(is_batch).join().unwrap_or(false);
            assert!(
                child,
                "a thread spawned by an I/O thread inherits its policy"
            );
            set(Policy::Normal);
            let worker = std::thread::spawn(|| {
                let before = is_batch();
                worker_thread();
                let child = std::thread::spawn(is_batch).join().unwrap_or(false);
                (before, is_batch(), child)
            })
            .join()
            .unwrap_or((true, false, false));
            assert_eq!(
                worker,
                (false, true, true),
                "a worker spawned by a normal thread makes itself batch, and its children inherit"
            );
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

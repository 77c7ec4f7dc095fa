//! Handing free heap back to the system. glibc keeps what a burst freed for the next
//! burst; on a robot, whose memory is small and shared with ROS, the agent gives it back
//! once the burst is over.

/// Returns the allocator's free pages to the system (a no-op where the allocator is not
/// glibc's). Costs about a millisecond: call it after bursts, not per event.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}

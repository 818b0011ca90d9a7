//! This process's peak resident memory (Linux: `VmHWM`), resettable, so that the loop can say
//! what its training steps alone needed — without the model's construction before them or the
//! gathering of a sharded run's parts after them.

/// Restarts the peak at the current resident size (`/proc/self/clear_refs`); a no-op where the
/// system has no such file.
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak resident memory since the start or the last [`reset_peak`], in bytes (`None`
/// where the system does not say).
pub fn peak_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peak_is_read_and_reset_on_linux() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let block = vec![1u8; 64 << 20];
        let high = super::peak_bytes().unwrap();
        assert!(high >= 64 << 20, "{high}");
        drop(block);
        super::reset_peak();
        let after = super::peak_bytes().unwrap();
        assert!(after <= high, "{after} vs {high}");
    }
}

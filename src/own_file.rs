//! Files the agent keeps beside its outbox or in its runtime directory (the breaker's
//! marks, the outbox lock) are its own: opened never through a symlink, created private,
//! and refused unless a regular file owned by this user. A symlink planted there must
//! not make the agent write into its target (the outbox, say).

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Opens (or creates, mode 0600) `path` for reading and writing, as described above.
pub fn open_own(path: &Path) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.file_type().is_file() || meta.uid() != me {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file owned by this user (uid {me}); move it away",
            path.display()
        )));
    }
    Ok(file)
}

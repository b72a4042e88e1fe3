//! The open-file limit (`RLIMIT_NOFILE`): raised from the soft to the hard limit at start-up, as Go programs do,
//! because every HTTP connection is a descriptor and the common soft limit of 1,024 is a small pool to share with
//! the devices. The web server's connection cap is then fitted below whatever limit is in force.

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tracing::{debug, info, warn};

/// The open-file limits of this process before and after [`raise_open_file_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    /// The soft limit found at start-up.
    pub before: u64,
    /// The soft limit in force now: the hard limit, unless raising it failed.
    pub soft: u64,
    /// The hard limit (the ceiling an unprivileged process may raise its soft limit to).
    pub hard: u64,
}

/// Raise this process's soft `RLIMIT_NOFILE` to its hard limit and log the change (info), or why it could not be
/// made (a warning: the exporter still runs, with a connection cap fitted to the lower limit). `None` when the
/// limits cannot even be read.
pub fn raise_open_file_limit() -> Option<OpenFileLimit> {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(error) => {
            warn!(%error, "cannot read the open-file limit (RLIMIT_NOFILE); leaving it as it is");
            return None;
        }
    };
    if soft >= hard {
        debug!(soft, hard, "the open-file limit is already at its hard limit");
        return Some(OpenFileLimit { before: soft, soft, hard });
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            info!(from = soft, to = hard, "raised the soft open-file limit (RLIMIT_NOFILE) to the hard limit");
            Some(OpenFileLimit { before: soft, soft: hard, hard })
        }
        Err(error) => {
            // A seccomp filter or a hard limit above the kernel's nr_open; the lower limit still works.
            warn!(%error, soft, hard, "cannot raise the soft open-file limit (RLIMIT_NOFILE); keeping it");
            Some(OpenFileLimit { before: soft, soft, hard })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_raising_the_soft_limit_is_the_hard_limit() {
        let limit = raise_open_file_limit().expect("the limits of this process are readable");
        assert!(limit.before <= limit.soft && limit.soft == limit.hard, "{limit:?}");
        // Raising again changes nothing.
        assert_eq!(raise_open_file_limit().map(|l| (l.before, l.soft)), Some((limit.soft, limit.soft)));
    }
}

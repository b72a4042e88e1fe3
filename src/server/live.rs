//! The web configuration in force, re-read when one of its files changes, as exporter-toolkit re-reads its file
//! for every request and TLS handshake: a renewed certificate (or a new user) takes effect on the next
//! connection, with no restart and no signal. The files are looked at no more than once per [`CHECK_INTERVAL`],
//! when a connection or request needs the configuration, and re-read only when their content changed. A changed
//! file that does not load (a half-written key, a YAML mistake) is logged once and the configuration in force is
//! kept; so is one that would switch TLS on or off, which the listener decided at start (restart for that).

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::web_config::WebConfig;

/// The shortest time between two looks at the files.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The configuration in force and the digest of the files it was checked against.
#[derive(Debug)]
pub(crate) struct LiveWebConfig {
    current: RwLock<(Arc<WebConfig>, u64)>,
    /// When the files may be looked at again.
    next_check: Mutex<Instant>,
}

impl LiveWebConfig {
    /// Serve `web` (just loaded) until one of its files changes.
    pub(crate) fn new(web: WebConfig) -> Self {
        let digest = web.files_digest();
        Self { current: RwLock::new((Arc::new(web), digest)), next_check: Mutex::new(Instant::now() + CHECK_INTERVAL) }
    }

    /// The configuration in force, after re-reading it when it is time to look and a file has changed.
    pub(crate) fn current(&self) -> Arc<WebConfig> {
        let due = {
            // One caller looks; the others go on with what is in force meanwhile.
            let next = self.next_check.try_lock();
            match next {
                Ok(mut next) if Instant::now() >= *next => {
                    *next = Instant::now() + CHECK_INTERVAL;
                    true
                }
                _ => false,
            }
        };
        if due {
            self.check();
        }
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner).0)
    }

    /// Re-read the configuration if its files changed since they were last checked.
    fn check(&self) {
        let (web, checked) = {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
            (Arc::clone(&current.0), current.1)
        };
        let digest = web.files_digest();
        if digest == checked {
            return;
        }
        let next = match WebConfig::load(web.path()) {
            Ok(new) if new.tls_enabled() != web.tls_enabled() => {
                tracing::error!(
                    file = %web.path().display(),
                    "web config not reloaded: it switches TLS {}, which needs a restart; the previous one stays in force",
                    if new.tls_enabled() { "on" } else { "off" }
                );
                (web, digest)
            }
            Ok(new) => {
                tracing::info!(
                    file = %new.path().display(),
                    tls = new.tls_enabled(),
                    basic_auth = new.basic_auth_enabled(),
                    "web config reloaded"
                );
                // The digest taken before the load: a file written since then is seen at the next look. Only a
                // new list of files needs a digest of its own.
                let digest = if new.files() == web.files() { digest } else { new.files_digest() };
                (Arc::new(new), digest)
            }
            Err(error) => {
                tracing::error!(%error, "web config not reloaded; the previous one stays in force");
                // Remembered, so the same broken content is reported once, not on every connection.
                (web, digest)
            }
        };
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_taken_an_unchanged_one_kept_and_a_broken_one_reported_and_ignored() {
        let dir = std::env::temp_dir().join(format!("bms-live-web-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("web.yml");
        // Cost 4 keeps the test fast; the server treats every cost alike.
        std::fs::write(&path, format!("basic_auth_users:\n  alice: {}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
        let live = LiveWebConfig::new(WebConfig::load(&path).unwrap());
        let first = live.current();
        assert!(first.basic_auth_enabled());

        live.check();
        assert!(Arc::ptr_eq(&first, &live.current()), "unchanged files are not read again");

        std::fs::write(&path, "# no users any more\n").unwrap();
        live.check();
        assert!(!live.current().basic_auth_enabled(), "the new content is in force");

        std::fs::write(&path, "basic_auth_users: [\n").unwrap();
        let before = live.current();
        live.check();
        assert!(Arc::ptr_eq(&before, &live.current()), "a broken file leaves the one in force");
        // Reported once: the broken content is remembered as checked.
        assert_eq!(live.current.read().unwrap().1, before.files_digest());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! `ConfigError`: why a configuration file was refused. A mistake inside the file always carries the file, the
//! line and column (1-based, in characters) and the key path (`devices[1].daly.address`), so the one-line
//! message can be pasted into an editor's "go to" and read without the file open.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read the configuration: {cause}", .file.display())]
    Read {
        /// The file as given.
        file: PathBuf,
        /// What the operating system said.
        cause: io::Error,
    },
    /// A mistake at a known place in the file.
    #[error("{0}")]
    Invalid(Located),
    /// Several mistakes that do not depend on each other (two devices each with an unknown key), in file order,
    /// one per line, so one run shows everything to fix.
    #[error("{}", lines(.0))]
    Several(Vec<Located>),
}

fn lines(all: &[Located]) -> String {
    all.iter().map(Located::to_string).collect::<Vec<_>>().join("\n")
}

impl ConfigError {
    /// The (first) located mistake, if the file could be read.
    #[must_use]
    pub fn located(&self) -> Option<&Located> {
        match self {
            Self::Read { .. } => None,
            Self::Invalid(located) => Some(located),
            Self::Several(all) => all.first(),
        }
    }

    /// Every located mistake, in file order.
    #[must_use]
    pub fn all_located(&self) -> Vec<&Located> {
        match self {
            Self::Read { .. } => Vec::new(),
            Self::Invalid(located) => vec![located],
            Self::Several(all) => all.iter().collect(),
        }
    }

    /// One error for `errors` (the first mistake alone, or all of them in file order); `None` for none.
    #[must_use]
    pub fn combine(errors: Vec<Self>) -> Option<Self> {
        let mut located: Vec<Located> = Vec::new();
        for error in errors {
            match error {
                // Not from a file's text; it cannot stand beside located ones, and it is enough on its own.
                Self::Read { .. } => return Some(error),
                Self::Invalid(one) => located.push(one),
                Self::Several(all) => located.extend(all),
            }
        }
        located.sort_by_key(|l| (l.line, l.column));
        located.dedup();
        match located.len() {
            0 => None,
            1 => located.pop().map(Self::Invalid),
            _ => Some(Self::Several(located)),
        }
    }

    /// A bounded label for logs and metrics: `read` or `invalid`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Invalid(_) | Self::Several(_) => "invalid",
        }
    }
}

/// A mistake in a configuration file and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The file as given.
    pub file: PathBuf,
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1, counted in characters.
    pub column: u64,
    /// Key path such as `devices[1].daly.address`; empty for the document itself.
    pub path: String,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_located_error_reads_file_line_column_path_message_and_drops_an_empty_path() {
        let mut located = Located {
            file: PathBuf::from("examples/x.yaml"),
            line: 7,
            column: 5,
            path: "devices[1].daly.address".to_owned(),
            message: "\"0x99\" is not rs485, uart or a board number 1–16".to_owned(),
        };
        let error = ConfigError::Invalid(located.clone());
        assert_eq!(
            error.to_string(),
            "examples/x.yaml:7:5: devices[1].daly.address: \"0x99\" is not rs485, uart or a board number 1–16"
        );
        assert_eq!(error.kind(), "invalid");
        located.path.clear();
        assert_eq!(located.to_string(), "examples/x.yaml:7:5: \"0x99\" is not rs485, uart or a board number 1–16");
    }
}

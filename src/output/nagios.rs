//! The Nagios/Icinga check: thresholds and a snapshot in, one status line with perfdata and an exit code out.

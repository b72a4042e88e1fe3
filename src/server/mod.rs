//! The HTTP server shell: serves a caller-built axum [`Router`](axum::Router) over plain HTTP or TLS, with the
//! basic auth and headers of an exporter-toolkit `--web.config.file`, a cap on open connections and a header read
//! timeout. It knows no routes; the caller mounts them. The web config is re-read when its files change
//! (`live.rs`), so a renewed certificate needs no restart.

mod auth;
mod connections;
mod idle;
mod landing;
mod listener;
mod live;
mod nofile;
pub mod process;
pub mod reload;
pub mod routes;
mod web_config;

pub use landing::About;
pub use listener::{Limits, serve, serve_with};
pub use nofile::{OpenFileLimit, raise_open_file_limit};
pub use web_config::{WebConfig, WebConfigError};

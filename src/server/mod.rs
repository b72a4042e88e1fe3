//! The HTTP server shell: serves a caller-built axum [`Router`](axum::Router) over plain HTTP or TLS, with the
//! basic auth and headers of an exporter-toolkit `--web.config.file`, a cap on open connections and a header read
//! timeout. The routes live in [`routes`] (with the status page in `landing.rs` and `/-/reload` in [`reload`]);
//! the caller builds them and mounts them. The web config is re-read when its files change (`live.rs`), so a
//! renewed certificate needs no restart.

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

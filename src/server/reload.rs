//! `POST /-/reload` and the routes a reload replaces. The endpoint only asks the serve loop to read the
//! configuration file it was started with again (the same as SIGHUP): it takes no body and no parameter, so a
//! request can neither choose what is loaded nor reach a write command. Basic auth, when configured, guards it
//! like every other path (the server layers it around this router). Like blackbox_exporter, and unlike
//! Prometheus's `--web.enable-lifecycle`, it needs no opt-in flag: the worst a caller can do is make the exporter
//! re-read an unchanged file, which changes nothing.
//!
//! [`Routes`] is the router in force, swapped after each successful reload (the new device list, the MQTT
//! publisher's health); every request, also on a kept-alive connection, is served by the one current when it
//! arrives.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::sync::{mpsc, oneshot};
use tower::ServiceExt as _;

/// A reload's outcome: what changed, or why nothing did.
pub type Outcome = Result<String, String>;

/// Where the endpoint sends its requests: the serve loop answers each with the outcome.
pub type Trigger = mpsc::Sender<oneshot::Sender<Outcome>>;

/// The routes in force, shared between the server and the serve loop that replaces them.
#[derive(Debug, Clone)]
pub struct Routes(Arc<RwLock<Router>>);

impl Routes {
    /// Serve `router` until [`Routes::set`] replaces it.
    #[must_use]
    pub fn new(router: Router) -> Self {
        Self(Arc::new(RwLock::new(router)))
    }

    /// Serve `router` from the next request on; requests in progress finish on the router they started with.
    pub fn set(&self, router: Router) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = router;
    }

    fn current(&self) -> Router {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl tower::Service<Request<Body>> for Routes {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        Box::pin(self.current().oneshot(request))
    }
}

/// `POST /-/reload` (any other method: 405 with `Allow: POST`), and every other path from `routes`.
pub fn router(routes: Routes, trigger: Trigger) -> Router {
    Router::new().route("/-/reload", post(reload)).with_state(trigger).fallback_service(routes)
}

/// 200 with what changed, or 500 with the reason the old configuration is still in force.
async fn reload(State(trigger): State<Trigger>) -> Response {
    let (reply, outcome) = oneshot::channel();
    if trigger.send(reply).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match outcome.await {
        Ok(Ok(summary)) => (StatusCode::OK, format!("configuration reloaded: {summary}\n")).into_response(),
        Ok(Err(error)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

//! A bare axum "Hello World!": one route, no middleware, `axum::serve` on 127.0.0.1:$PORT.

use axum::{Router, routing::get};

#[tokio::main]
async fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .expect("the port is free");
    let app = Router::new().route("/", get(|| async { "Hello World!" }));
    axum::serve(listener, app).await.expect("serving does not fail");
}

//! A plain ws:// echo server, the upstream for benchmarks and manual tests.
//!
//!     cargo run --release --example upstream_echo -- 127.0.0.1:9000

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    eprintln!(
        "upstream echo on ws://{}",
        listener.local_addr().expect("addr")
    );
    while let Ok((stream, _)) = listener.accept().await {
        stream.set_nodelay(true).ok();
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let (tx, rx) = ws.split();
            let _ = rx
                .filter(|m| {
                    std::future::ready(matches!(m, Ok(Message::Text(_) | Message::Binary(_))))
                })
                .forward(tx)
                .await;
        });
    }
}

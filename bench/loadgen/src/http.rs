//! The HTTP side of the load generator: WebSockets over HTTP/2 (RFC 8441 extended
//! CONNECT, many on one TLS connection), and the plain HTTP/1.1 upstream that answers
//! the HTTP phases' GETs behind every proxy (h2load is their client).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

/// A WebSocket carried on one stream of an HTTP/2 connection.
pub type H2Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// One TLS connection that negotiates h2, with `count` WebSockets opened on it by
/// extended CONNECT to `url` (a wss:// URL; the request's `:scheme` is https).
pub async fn websockets_over_h2(
    host: &str,
    port: u16,
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    count: usize,
) -> std::io::Result<Vec<H2Ws>> {
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host.to_string()).map_err(other)?;
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
        return Err(other("the server did not choose h2 in ALPN"));
    }
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
        .await
        .map_err(other)?;
    tokio::spawn(conn);
    let uri = url.replacen("wss://", "https://", 1);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(&uri)
            .header("sec-websocket-version", "13")
            .body(Empty::new())
            .map_err(other)?;
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        send.ready().await.map_err(other)?;
        let res = send.send_request(req).await.map_err(other)?;
        if res.status() != StatusCode::OK {
            return Err(other(format!("extended CONNECT answered {}", res.status())));
        }
        let upgraded = hyper::upgrade::on(res).await.map_err(other)?;
        out.push(
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await,
        );
    }
    Ok(out)
}

/// A plain HTTP/1.1 server with keep-alive that answers every request with 200 and
/// `size` bytes of text: the upstream of the HTTP phases.
pub async fn upstream(listen: &str, size: usize) -> serde_json::Value {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .expect("bind the HTTP upstream");
    eprintln!(
        "HTTP upstream on http://{}",
        listener.local_addr().expect("address")
    );
    let body = Bytes::from(vec![b'x'; size]);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let mut res = Response::new(Full::new(body.clone()));
                    res.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain"),
                    );
                    std::future::ready(Ok::<_, Infallible>(res))
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

//! The agent's HTTP endpoint: `/healthz` and `/metrics` (Prometheus text), on a localhost address
//! by default. Deliberately tiny: one GET per connection, no keep-alive, nothing else served.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::{inputs::Inputs, status};

/// The last good inputs, as the agent holds them.
pub type Shared = watch::Receiver<Arc<Inputs>>;

/// Serves until the listener fails; each request reads the status afresh from the kernel.
pub async fn serve(listener: TcpListener, inputs: Shared, pin_dir: PathBuf) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let inputs = inputs.borrow().clone();
        let pin_dir = pin_dir.clone();
        tokio::spawn(async move {
            if let Err(e) = respond(stream, &inputs, &pin_dir).await {
                tracing::warn!("metrics request from {peer}: {e}");
            }
        });
    }
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn respond(
    mut stream: TcpStream,
    inputs: &Inputs,
    pin_dir: &std::path::Path,
) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (code, body) = match path {
        "/healthz" => ("200 OK", "ok\n".to_owned()),
        "/metrics" => {
            match status::collect(&inputs.view, &inputs.keys, &inputs.retired, pin_dir).await {
                Ok(status) => ("200 OK", status.metrics()),
                Err(e) => ("500 Internal Server Error", format!("{e}\n")),
            }
        }
        _ => ("404 Not Found", "try /metrics or /healthz\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {code}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

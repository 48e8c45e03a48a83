//! The agent's HTTP endpoint: `/healthz` and `/metrics` (Prometheus text), on a localhost address
//! by default. Deliberately tiny: one GET per connection, no keep-alive, nothing else served.
//!
//! It runs on a thread and runtime of its own, so a slow or hostile client never delays a
//! reconcile or the classification of a new pod; at most [`MAX_CONNECTIONS`] are served at
//! once (more are closed at once, so they cannot exhaust the agent's file descriptors), and a
//! client gets [`REQUEST_TIMEOUT`] to send its request.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    time::timeout,
};

use crate::{inputs::Inputs, status};

/// The last good inputs, as the agent holds them.
pub type Shared = watch::Receiver<Arc<Inputs>>;

/// Connections served at once; further ones are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send its request, and then to take the response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` and serves it on a thread of its own until the process ends; each request
/// reads the status afresh from the kernel.
pub fn spawn(addr: SocketAddr, inputs: Shared, pin_dir: PathBuf) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, inputs, pin_dir).await,
                    Err(e) => tracing::warn!("serving metrics on {addr}: {e}"),
                }
            })
        })?;
    Ok(())
}

async fn serve(listener: TcpListener, inputs: Shared, pin_dir: PathBuf) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // Out of descriptors or the like: wait a moment rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let inputs = inputs.borrow().clone();
        let pin_dir = pin_dir.clone();
        tokio::spawn(async move {
            if let Err(e) = respond(stream, &inputs, &pin_dir).await {
                tracing::debug!("metrics request from {peer}: {e}");
            }
            drop(slot);
        });
    }
}

async fn respond(
    mut stream: TcpStream,
    inputs: &Inputs,
    pin_dir: &std::path::Path,
) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    let read_head = async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    timeout(REQUEST_TIMEOUT, read_head)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request in time"))??;
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
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    timeout(REQUEST_TIMEOUT, write)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response not taken"))?
}

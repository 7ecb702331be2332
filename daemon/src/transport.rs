//! The client + peer listener on `--listen`.
//!
//! The listener is bound (so the ready file can report it) and accepts
//! connections; the MPREG protocol on it is not served by this build yet,
//! so each connection is closed at once.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Accepts connections until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracing::debug!(%peer, "closing client connection: protocol not served yet");
                    drop(stream);
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            () = shutdown.cancelled() => return,
        }
    }
}

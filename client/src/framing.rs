//! The `tcp://` and `tcps://` transport of upstream MPREG: each JSON frame
//! is preceded by its length as a 4-byte big-endian unsigned integer, over
//! plain TCP or TLS. Frames are read and written as WebSocket [`Message`]s
//! (binary), so sessions and clients serve both transports with one code
//! path; pings, pongs and close frames have no counterpart here and are
//! not written (closing the stream closes the connection).

use std::pin::Pin;

use futures_util::{Sink, SinkExt, Stream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use tokio_util::bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// A connection carrying [`Message`]s, whichever the transport.
pub trait MessageTransport:
    Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Send
{
}

impl<T> MessageTransport for T where
    T: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Send
{
}

/// A connection of either transport, boxed.
pub type Transport = Pin<Box<dyn MessageTransport>>;

/// Whether `url` names the length-prefixed transport (`tcp://`, `tcps://`).
pub fn is_framed_url(url: &str) -> bool {
    url.starts_with("tcp://") || url.starts_with("tcps://")
}

/// Most frames [`write_burst`] writes with one flush.
pub const WRITE_BURST: usize = 64;

/// Writes `first` and the frames waiting in `queue` (at most
/// [`WRITE_BURST`] in all, none after a Close) with one flush, so a burst
/// of replies costs one send instead of one each. It first yields once, so
/// tasks the runtime already woke (the other replies of a batch of
/// requests) queue their frames behind `first`. `counted` sees each frame
/// before it is written. Returns whether a Close was written.
pub async fn write_burst<S>(
    sink: &mut S,
    first: Message,
    queue: &mut mpsc::Receiver<Message>,
    mut counted: impl FnMut(&Message),
) -> Result<bool, WsError>
where
    S: Sink<Message, Error = WsError> + Unpin + ?Sized,
{
    tokio::task::yield_now().await;
    let mut next = Some(first);
    let mut written = 0;
    while let Some(message) = next.take() {
        let closing = matches!(message, Message::Close(_));
        counted(&message);
        sink.feed(message).await?;
        written += 1;
        if closing {
            sink.flush().await?;
            return Ok(true);
        }
        if written < WRITE_BURST {
            next = queue.try_recv().ok();
        }
    }
    sink.flush().await?;
    Ok(false)
}

/// Length-prefixed frames of at most `max` bytes: a longer declared length
/// is refused before its bytes are read, naming both sizes (which
/// `LengthDelimitedCodec`'s error does not, hence these few lines).
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    pub fn new(max: usize) -> FrameCodec {
        FrameCodec { max }
    }
}

impl Decoder for FrameCodec {
    type Item = Message;
    type Error = WsError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WsError> {
        let Some(&[a, b, c, d]) = src.get(..4) else {
            return Ok(None);
        };
        let size = u32::from_be_bytes([a, b, c, d]) as usize;
        if size > self.max {
            return Err(WsError::Capacity(CapacityError::MessageTooLong {
                size,
                max_size: self.max,
            }));
        }
        if src.len() < 4 + size {
            src.reserve(4 + size - src.len());
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(Message::Binary(src.split_to(size).freeze())))
    }
}

impl Encoder<Message> for FrameCodec {
    type Error = WsError;

    fn encode(&mut self, message: Message, dst: &mut BytesMut) -> Result<(), WsError> {
        let payload: Bytes = match message {
            Message::Text(text) => text.into(),
            Message::Binary(bytes) => bytes,
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
                return Ok(());
            }
        };
        let size = u32::try_from(payload.len()).map_err(|_| {
            WsError::Capacity(CapacityError::MessageTooLong {
                size: payload.len(),
                max_size: u32::MAX as usize,
            })
        })?;
        dst.reserve(4 + payload.len());
        dst.put_u32(size);
        dst.put_slice(&payload);
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn frames_round_trip_and_an_oversize_length_is_refused_before_its_bytes() {
        let mut codec = FrameCodec::new(16);
        let mut wire = BytesMut::new();
        codec.encode(Message::text("{\"a\":1}"), &mut wire).unwrap();
        codec
            .encode(Message::Ping(Bytes::new()), &mut wire)
            .unwrap();
        codec
            .encode(Message::binary(b"[]".to_vec()), &mut wire)
            .unwrap();
        assert_eq!(&wire[..4], &[0, 0, 0, 7]);
        assert_eq!(wire.len(), 4 + 7 + 4 + 2);
        let first = codec.decode(&mut wire).unwrap().unwrap();
        assert_eq!(first.into_data().as_ref(), b"{\"a\":1}");
        let second = codec.decode(&mut wire).unwrap().unwrap();
        assert_eq!(second.into_data().as_ref(), b"[]");
        assert!(codec.decode(&mut wire).unwrap().is_none());

        // A frame arriving in pieces (the length first, as upstream's
        // client writes it) is read whole once it is all there.
        let mut partial = BytesMut::from(&[0u8, 0, 0, 3][..]);
        assert!(codec.decode(&mut partial).unwrap().is_none());
        partial.extend_from_slice(b"[1");
        assert!(codec.decode(&mut partial).unwrap().is_none());
        partial.extend_from_slice(b"]");
        let whole = codec.decode(&mut partial).unwrap().unwrap();
        assert_eq!(whole.into_data().as_ref(), b"[1]");
        assert!(partial.is_empty());

        let mut oversize = BytesMut::from(&[0u8, 0, 0, 17][..]);
        match codec.decode(&mut oversize) {
            Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
                assert_eq!((size, max_size), (17, 16));
            }
            other => panic!("{other:?}"),
        }
    }
}

//! Length-prefixed frames.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of a
//! message in the [`crate::schema`] encoding (the hello exchange alone uses
//! postcard: [`read_hello_frame`], [`write_hello_frame`]). The length is checked against the caller's limit before any
//! buffer grows, so a peer cannot make us allocate more than the limit. An
//! incomplete frame is not an error ("read more"); a clean end of stream
//! before the first byte of a frame is `Ok(None)`, an end in the middle of one
//! is [`FrameError::Truncated`].

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::schema::{self, SchemaError};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// Default limit for control messages (heartbeats, registrations, API calls).
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("stream ended in the middle of a frame ({got} of {expected} bytes)")]
    Truncated { got: usize, expected: usize },
    #[error("frame does not decode as the expected message: {0}")]
    Decode(#[source] SchemaError),
    #[error("message does not encode: {0}")]
    Encode(#[source] SchemaError),
    #[error("hello frame does not decode: {0}")]
    Hello(#[source] postcard::Error),
    /// With its causes: quinn's "connection lost" alone does not say
    /// whether the peer closed, reset or timed out.
    #[error("i/o error on stream: {}", with_causes(.0))]
    Io(#[from] std::io::Error),
}

/// `e` and the chain of errors under it, `: `-separated.
fn with_causes(e: &std::io::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.get_ref().and_then(|inner| inner.source());
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

/// Encodes `msg` as one frame (prefix + body).
pub fn encode<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    // Serialise behind a placeholder header, then fill the header in.
    let mut out = vec![0u8; HEADER_LEN];
    schema::encode_into(msg, &mut out).map_err(FrameError::Encode)?;
    seal(out, max)
}

/// Encodes a hello frame (postcard, readable by every protocol version).
pub fn encode_hello<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let out = postcard::to_extend(msg, vec![0u8; HEADER_LEN]).map_err(FrameError::Hello)?;
    seal(out, max)
}

/// Fills in the length prefix of `out` (a placeholder header, then the body).
fn seal(mut out: Vec<u8>, max: usize) -> Result<Vec<u8>, FrameError> {
    let body = out.len() - HEADER_LEN;
    if body > max {
        return Err(FrameError::TooLarge { len: body, max });
    }
    let len = u32::try_from(body).map_err(|_| FrameError::TooLarge { len: body, max })?;
    out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Tries to take one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame, or
/// `Ok(Some((msg, consumed)))`.
pub fn decode<T: DeserializeOwned>(buf: &[u8], max: usize) -> Result<Option<(T, usize)>, FrameError> {
    let Some(len) = peek_len(buf, max)? else {
        return Ok(None);
    };
    let end = HEADER_LEN + len;
    if buf.len() < end {
        return Ok(None);
    }
    let msg = schema::decode(&buf[HEADER_LEN..end]).map_err(FrameError::Decode)?;
    Ok(Some((msg, end)))
}

/// Reads the length prefix, if complete, and checks it against `max`.
fn peek_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut len = [0u8; HEADER_LEN];
    len.copy_from_slice(header);
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(Some(len))
}

/// Reads one frame from a stream. `Ok(None)` on a clean end of stream.
pub async fn read_frame<T, R>(reader: &mut R, max: usize) -> Result<Option<T>, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    match read_frame_bytes(reader, max).await? {
        None => Ok(None),
        Some(body) => schema::decode(&body).map(Some).map_err(FrameError::Decode),
    }
}

/// Reads one hello frame (postcard). `Ok(None)` on a clean end of stream.
pub async fn read_hello_frame<T, R>(reader: &mut R, max: usize) -> Result<Option<T>, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    match read_frame_bytes(reader, max).await? {
        None => Ok(None),
        Some(body) => postcard::from_bytes(&body).map(Some).map_err(FrameError::Hello),
    }
}

/// Writes one hello frame (postcard).
pub async fn write_hello_frame<T, W>(writer: &mut W, msg: &T, max: usize) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let bytes = encode_hello(msg, max)?;
    writer.write_all(&bytes).await?;
    Ok(())
}

/// Reads one frame's body, undecoded. `Ok(None)` on a clean end of stream.
pub async fn read_frame_bytes<R>(reader: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = reader.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated { got, expected: HEADER_LEN });
        }
        got += n;
    }
    let len = peek_len(&header, max)?.unwrap_or(0);
    // The limit was checked above, so this allocation is bounded by `max`.
    let mut body = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = reader.read(&mut body[got..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated { got: HEADER_LEN + got, expected: HEADER_LEN + len });
        }
        got += n;
    }
    Ok(Some(body))
}

/// Writes one frame to a stream.
pub async fn write_frame<T, W>(writer: &mut W, msg: &T, max: usize) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let bytes = encode(msg, max)?;
    writer.write_all(&bytes).await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Ping(u64),
        Text(String),
        Blob(Vec<u8>),
    }

    #[test]
    fn io_errors_name_their_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("connection lost")]
        struct Lost(#[source] Reset);
        #[derive(Debug, thiserror::Error)]
        #[error("reset by peer")]
        struct Reset;
        let e = FrameError::from(std::io::Error::other(Lost(Reset)));
        assert_eq!(e.to_string(), "i/o error on stream: connection lost: reset by peer");
        let plain = FrameError::from(std::io::Error::other("gone"));
        assert_eq!(plain.to_string(), "i/o error on stream: gone");
    }

    #[test]
    fn round_trip_and_incomplete() {
        let bytes = encode(&Msg::Text("hello".into()), 1024).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode::<Msg>(&bytes[..cut], 1024).unwrap().is_none(), "cut at {cut}");
        }
        let (msg, used) = decode::<Msg>(&bytes, 1024).unwrap().unwrap();
        assert_eq!(msg, Msg::Text("hello".into()));
        assert_eq!(used, bytes.len());
    }

    #[test]
    fn two_frames_back_to_back() {
        let mut buf = encode(&Msg::Ping(1), 64).unwrap();
        buf.extend(encode(&Msg::Ping(2), 64).unwrap());
        let (a, used) = decode::<Msg>(&buf, 64).unwrap().unwrap();
        let (b, used2) = decode::<Msg>(&buf[used..], 64).unwrap().unwrap();
        assert_eq!((a, b), (Msg::Ping(1), Msg::Ping(2)));
        assert_eq!(used + used2, buf.len());
    }

    #[test]
    fn oversized_length_is_refused_before_body_arrives() {
        // Only the header: a 4 GiB claim must be refused without waiting for the body.
        let header = u32::MAX.to_be_bytes();
        match decode::<Msg>(&header, 1024) {
            Err(FrameError::TooLarge { len, max }) => assert_eq!((len, max), (u32::MAX as usize, 1024)),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn oversized_message_is_refused_on_encode() {
        let err = encode(&Msg::Blob(vec![7; 2000]), 1000).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn garbage_body_is_a_decode_error() {
        let mut buf = 3u32.to_be_bytes().to_vec();
        buf.extend([0xff, 0xff, 0xff]);
        assert!(matches!(decode::<Msg>(&buf, 64), Err(FrameError::Decode(_))));
    }

    #[tokio::test]
    async fn stream_reader_distinguishes_clean_eof_from_truncation() {
        let empty: &[u8] = &[];
        let mut r = empty;
        assert!(read_frame::<Msg, _>(&mut r, 64).await.unwrap().is_none());

        let bytes = encode(&Msg::Text("abcdef".into()), 64).unwrap();
        let mut r = &bytes[..2];
        assert!(matches!(read_frame::<Msg, _>(&mut r, 64).await, Err(FrameError::Truncated { .. })));
        let mut r = &bytes[..bytes.len() - 1];
        assert!(matches!(read_frame::<Msg, _>(&mut r, 64).await, Err(FrameError::Truncated { .. })));
        let mut r = &bytes[..];
        assert_eq!(read_frame::<Msg, _>(&mut r, 64).await.unwrap(), Some(Msg::Text("abcdef".into())));
    }

    #[tokio::test]
    async fn stream_reader_refuses_oversized_claim() {
        let mut buf = (1u32 << 30).to_be_bytes().to_vec();
        buf.extend([0u8; 8]);
        let mut r = &buf[..];
        assert!(matches!(read_frame::<Msg, _>(&mut r, 1024).await, Err(FrameError::TooLarge { .. })));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode::<Msg>(&bytes, 128);
        }
    }
}

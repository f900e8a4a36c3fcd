//! Frames: `u32` big-endian length, then a postcard-encoded message. A frame larger than
//! [`MAX_FRAME`] is refused before anything is allocated for it.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted: 256 entries of at most 4 MiB values fit with room to spare only if
/// values are small; openraft's `max_payload_entries` and the snapshot chunk size keep real
/// frames far below this bound.
pub const MAX_FRAME: usize = 64 << 20;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The connection failed or closed.
    #[error("peer connection: {0}")]
    Io(#[from] std::io::Error),
    /// A frame above the bound.
    #[error("peer frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// Bytes that are not a message of the expected type.
    #[error("undecodable peer frame: {0}")]
    Decode(String),
}

/// Writes one message as a frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), CodecError> {
    let bytes = postcard::to_allocvec(msg).map_err(|e| CodecError::Decode(e.to_string()))?;
    if bytes.len() > MAX_FRAME {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    w.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame and decodes it.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<T, CodecError> {
    read_frame_max(r, MAX_FRAME).await
}

/// Reads one frame of at most `max` bytes (refused before anything is allocated for it) and
/// decodes it.
pub async fn read_frame_max<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
) -> Result<T, CodecError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max.min(MAX_FRAME) {
        return Err(CodecError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    postcard::from_bytes(&buf).map_err(|e| CodecError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_bounds() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, &("hello".to_string(), 7u64))
            .await
            .unwrap();
        let got: (String, u64) = read_frame(&mut b).await.unwrap();
        assert_eq!(got, ("hello".to_string(), 7));
        a.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_frame::<_, String>(&mut b).await,
            Err(CodecError::TooLarge(_))
        ));
    }
}

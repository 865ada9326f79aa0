//! Postcard encoding and `u32` big-endian length-prefixed framing.

use crate::message::SyncMessage;

/// The default maximum frame size: 4 MiB.
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;

/// A message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
    /// The bytes decode to a message followed by unexpected trailing bytes.
    #[error("{0} trailing bytes after message")]
    TrailingBytes(usize),
    /// The message's values would take more memory than the decode budget allows
    /// ([`value_budget`] of the message's length; see [`Value`](crate::Value)).
    #[error("decoded values exceed the budget of {max} bytes")]
    TooManyValues {
        /// The budget, in bytes of decoded values.
        max: usize,
    },
}

/// Encodes a message with postcard.
pub fn encode(msg: &SyncMessage) -> Vec<u8> {
    // Every message type is postcard-serialisable; serialising into a Vec cannot fail.
    postcard::to_stdvec(msg).unwrap_or_default()
}

use crate::value::value_budget;

/// Decodes one message; the whole input must be consumed. The message's values may take at
/// most [`value_budget`]`(bytes.len())` bytes once decoded (24 per input byte plus 4 KiB);
/// a message over it is refused with [`CodecError::TooManyValues`].
pub fn decode(bytes: &[u8]) -> Result<SyncMessage, CodecError> {
    let max = value_budget(bytes.len());
    let (decoded, exceeded) =
        crate::value::with_budget(max, || postcard::take_from_bytes::<SyncMessage>(bytes));
    if exceeded {
        return Err(CodecError::TooManyValues { max });
    }
    let (msg, rest) = decoded?;
    if rest.is_empty() {
        Ok(msg)
    } else {
        Err(CodecError::TrailingBytes(rest.len()))
    }
}

/// Encodes a message as one frame: a `u32` big-endian length followed by the postcard bytes.
pub fn encode_frame(msg: &SyncMessage) -> Vec<u8> {
    let body = encode(msg);
    let mut out = Vec::with_capacity(4 + body.len());
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// A frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces a frame larger than the maximum (nothing was allocated).
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The frame body is not a valid message.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// A sans-IO decoder for length-prefixed frames: push bytes as they arrive, pop messages.
///
/// The length prefix is checked against the maximum frame size *before* any buffer is sized
/// for the body, so a hostile length allocates nothing. After an error the decoder is poisoned:
/// the stream is out of sync and the connection must be closed.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame: usize,
    buf: Vec<u8>,
    poisoned: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameDecoder {
    /// A decoder that refuses frames larger than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder {
            max_frame,
            buf: Vec::new(),
            poisoned: false,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.poisoned {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The length announced by the buffered prefix, checked against the maximum.
    fn frame_len(&self) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        Ok(Some(len))
    }

    /// How many more bytes the current frame needs (for readers that read exactly).
    pub fn wanted(&self) -> Result<usize, FrameError> {
        match self.frame_len()? {
            None => Ok(4 - self.buf.len()),
            Some(len) => Ok((4 + len).saturating_sub(self.buf.len()).max(1)),
        }
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<SyncMessage>, FrameError> {
        if self.poisoned {
            return Ok(None);
        }
        let result = self.try_next();
        if result.is_err() {
            self.poisoned = true;
            self.buf = Vec::new();
        }
        result
    }

    fn try_next(&mut self) -> Result<Option<SyncMessage>, FrameError> {
        let Some(len) = self.frame_len()? else {
            return Ok(None);
        };
        let Some(body) = self.buf.get(4..4 + len) else {
            return Ok(None);
        };
        let msg = decode(body)?;
        self.buf.drain(..4 + len);
        Ok(Some(msg))
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceId, ErrorCode, VersionVector};

    fn sample() -> Vec<SyncMessage> {
        vec![
            SyncMessage::Heartbeat(crate::Summary {
                heads: [(DeviceId::from_u128(1), 5)].into_iter().collect(),
                vv: VersionVector::new(),
            }),
            SyncMessage::HeartbeatDelta(crate::Summary {
                heads: [(DeviceId::from_u128(2), 7)].into_iter().collect(),
                vv: VersionVector::new(),
            }),
            SyncMessage::Error(crate::ErrorReply {
                request_id: Some(3),
                code: ErrorCode::Busy,
                message: "later".into(),
            }),
        ]
    }

    #[test]
    fn frames_split_at_every_boundary_decode_identically() {
        let stream: Vec<u8> = sample().iter().flat_map(encode_frame).collect();
        for cut in 0..=stream.len() {
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            for chunk in [&stream[..cut], &stream[cut..]] {
                d.push(chunk);
                while let Some(m) = d.next_message().expect("valid stream") {
                    got.push(m);
                }
            }
            assert_eq!(got, sample(), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let mut d = FrameDecoder::new(1024);
        d.push(&u32::MAX.to_be_bytes());
        let err = d.next_message().expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { len, max: 1024 } if len == u32::MAX as usize));
        assert_eq!(d.buffered(), 0);
        // Poisoned: later bytes are ignored.
        d.push(&encode_frame(&sample()[0]));
        assert!(d.next_message().expect("poisoned").is_none());
    }

    #[test]
    fn garbage_body_is_a_typed_error() {
        let mut d = FrameDecoder::default();
        d.push(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_message(), Err(FrameError::Codec(_))));
    }

    #[test]
    fn truncated_frame_waits_for_more_bytes() {
        let frame = encode_frame(&sample()[0]);
        let mut d = FrameDecoder::default();
        d.push(&frame[..frame.len() - 1]);
        assert!(d.next_message().expect("incomplete").is_none());
        d.push(&frame[frame.len() - 1..]);
        assert_eq!(
            d.next_message().expect("complete"),
            Some(sample()[0].clone())
        );
    }

    #[test]
    fn trailing_bytes_after_message_are_refused() {
        let mut bytes = encode(&sample()[0]);
        bytes.push(0);
        assert!(matches!(decode(&bytes), Err(CodecError::TrailingBytes(1))));
    }

    /// A shared change whose one field is a list of `n` nulls (one byte each on the wire).
    fn nulls(n: usize) -> SyncMessage {
        use crate::{ChangeKind, Hlc, SharedChange, Value};
        SyncMessage::SharedChange(SharedChange {
            origin: DeviceId::from_u128(1),
            seq: 1,
            hlc: Hlc {
                time_ms: 1,
                counter: 0,
                device: DeviceId::from_u128(1),
            },
            model: "tag".into(),
            record: uuid::Uuid::from_u128(7),
            kind: ChangeKind::Insert,
            fields: [("x".to_owned(), Value::List(vec![Value::Null; n]))].into(),
        })
    }

    #[test]
    fn a_maximal_frame_of_nulls_is_refused_as_too_many_values() {
        // Decoded, each one-byte null is a 32-byte `Value`: without a budget, 4 MiB on the
        // wire became 128 MiB (and more while the list grew) in memory.
        let bytes = encode(&nulls(DEFAULT_MAX_FRAME - 128));
        assert!(bytes.len() <= DEFAULT_MAX_FRAME);
        let err = decode(&bytes).expect_err("refused");
        assert!(
            matches!(err, CodecError::TooManyValues { max } if max == value_budget(bytes.len())),
            "{err:?}"
        );
        let mut d = FrameDecoder::default();
        d.push(&encode_frame(&nulls(DEFAULT_MAX_FRAME - 128)));
        assert!(matches!(
            d.next_message(),
            Err(FrameError::Codec(CodecError::TooManyValues { .. }))
        ));
    }

    #[test]
    fn values_within_the_budget_decode() {
        // A list of small values (two bytes each) fits any frame; so do a few nulls.
        use crate::Value;
        let ints = SyncMessage::Error(crate::ErrorReply {
            request_id: None,
            code: ErrorCode::Busy,
            message: String::new(),
        });
        assert_eq!(decode(&encode(&ints)).ok(), Some(ints));
        let few = nulls(100);
        assert_eq!(decode(&encode(&few)).ok(), Some(few));
        let mut change = nulls(0);
        if let SyncMessage::SharedChange(c) = &mut change {
            c.fields.insert(
                "ints".into(),
                Value::List((0..100_000).map(|i| Value::Int(i % 64)).collect()),
            );
        }
        assert_eq!(decode(&encode(&change)).ok(), Some(change));
    }

    #[test]
    fn unknown_variant_is_a_typed_error() {
        assert!(matches!(decode(&[200]), Err(CodecError::Malformed(_))));
    }
}

//! The frames ranks exchange inside an operation, and their checks.
//!
//! Every message on a ring link starts with a fixed 32-byte [`Header`]:
//! its kind, the operation's sequence number and its length. An operation
//! begins with an `OpStart` frame naming the call (so two ranks that
//! disagree fail with both calls named), continues with `Data` frames (one
//! per pipelined chunk, numbered), and a rank that gives up sends `Abort`
//! with its reason so the rest of the ring learns why.

use super::{OpCall, OpKind};

pub const HEADER_BYTES: usize = 32;
/// The longest abort message carried (longer ones are cut).
pub const MAX_ABORT_BYTES: usize = 4096;

const KIND_OP_START: u32 = 0x4c46_0001;
const KIND_DATA: u32 = 0x4c46_0002;
const KIND_ABORT: u32 = 0x4c46_0003;

const OP_ALL_REDUCE_SUM: u32 = 1;
const OP_BROADCAST: u32 = 2;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    OpStart {
        seq: u64,
        call: OpCall,
    },
    /// `bytes` of payload follow; `index` counts the operation's chunks.
    Data {
        seq: u64,
        index: u64,
        bytes: u64,
    },
    /// `bytes` of UTF-8 reason follow, padded to `padded` bytes.
    Abort {
        bytes: u64,
        padded: u64,
    },
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let (kind, op, seq, a, b) = match *self {
            Header::OpStart { seq, call } => {
                let (op, root) = match call.op {
                    OpKind::AllReduceSum => (OP_ALL_REDUCE_SUM, 0),
                    OpKind::Broadcast { root } => (OP_BROADCAST, root as u64),
                };
                (KIND_OP_START, op, seq, call.count, root)
            }
            Header::Data { seq, index, bytes } => (KIND_DATA, 0, seq, bytes, index),
            Header::Abort { bytes, padded } => (KIND_ABORT, 0, 0, bytes, padded),
        };
        let mut out = [0u8; HEADER_BYTES];
        out[0..4].copy_from_slice(&kind.to_le_bytes());
        out[4..8].copy_from_slice(&op.to_le_bytes());
        out[8..16].copy_from_slice(&seq.to_le_bytes());
        out[16..24].copy_from_slice(&a.to_le_bytes());
        out[24..32].copy_from_slice(&b.to_le_bytes());
        out
    }

    /// Decodes a header; an error describes what was wrong with the bytes.
    pub fn decode(bytes: &[u8; HEADER_BYTES]) -> Result<Header, String> {
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
        let (kind, op, seq, a, b) = (u32_at(0), u32_at(4), u64_at(8), u64_at(16), u64_at(24));
        match kind {
            KIND_OP_START => {
                let op = match op {
                    OP_ALL_REDUCE_SUM => OpKind::AllReduceSum,
                    OP_BROADCAST => OpKind::Broadcast {
                        root: u32::try_from(b).map_err(|_| format!("broadcast root {b}"))?,
                    },
                    other => return Err(format!("unknown operation code {other}")),
                };
                Ok(Header::OpStart {
                    seq,
                    call: OpCall { op, count: a },
                })
            }
            KIND_DATA => Ok(Header::Data {
                seq,
                index: b,
                bytes: a,
            }),
            KIND_ABORT => {
                if a > MAX_ABORT_BYTES as u64 || b < a || b > a + 3 || b % 4 != 0 {
                    return Err(format!("abort frame of {a} bytes padded to {b}"));
                }
                Ok(Header::Abort {
                    bytes: a,
                    padded: b,
                })
            }
            other => Err(format!(
                "unknown frame kind {other:#010x} (first bytes {:02x?})",
                &bytes[..8]
            )),
        }
    }
}

/// An abort frame carrying `reason`: header and padded payload.
pub fn abort_frame(reason: &str) -> Vec<u8> {
    let mut text = reason.as_bytes();
    if text.len() > MAX_ABORT_BYTES {
        let mut end = MAX_ABORT_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        text = &text[..end];
    }
    let padded = text.len().div_ceil(4) * 4;
    let mut out = Header::Abort {
        bytes: text.len() as u64,
        padded: padded as u64,
    }
    .encode()
    .to_vec();
    out.extend_from_slice(text);
    out.resize(HEADER_BYTES + padded, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let frames = [
            Header::OpStart {
                seq: 7,
                call: OpCall {
                    op: OpKind::Broadcast { root: 3 },
                    count: 1 << 40,
                },
            },
            Header::OpStart {
                seq: 1,
                call: OpCall {
                    op: OpKind::AllReduceSum,
                    count: 5,
                },
            },
            Header::Data {
                seq: 9,
                index: 4,
                bytes: 1024,
            },
            Header::Abort {
                bytes: 5,
                padded: 8,
            },
        ];
        for h in frames {
            assert_eq!(Header::decode(&h.encode()), Ok(h));
        }
    }

    #[test]
    fn garbage_is_refused_with_its_bytes() {
        let err = Header::decode(&[0xab; HEADER_BYTES]).unwrap_err();
        assert!(err.contains("unknown frame kind"), "{err}");
        let mut abort = Header::Abort {
            bytes: 3,
            padded: 4,
        }
        .encode();
        abort[16] = 0xff; // claims more than MAX_ABORT_BYTES
        abort[17] = 0xff;
        assert!(Header::decode(&abort).is_err());
    }

    #[test]
    fn abort_frames_are_padded_to_four_bytes() {
        let f = abort_frame("bad");
        assert_eq!(f.len(), HEADER_BYTES + 4);
        let long = "é".repeat(MAX_ABORT_BYTES);
        let f = abort_frame(&long);
        assert!(f.len() <= HEADER_BYTES + MAX_ABORT_BYTES);
        assert_eq!(f.len() % 4, 0);
    }
}

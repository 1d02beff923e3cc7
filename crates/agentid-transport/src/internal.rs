//! Not part of the API: the wire codec, for this crate's tests and fuzz targets that play a
//! hostile peer. The bodies of control frames are deliberately not here: a test writes them as
//! JSON, the way a peer in another language would.

pub use crate::frame::{decode, encode, read_frame, write_frame, Frame, FrameType, HEADER_LEN};

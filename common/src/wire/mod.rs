//! The wire: frame codec and the messages it carries.

pub mod frame;
pub mod messages;

pub use frame::{read_frame, write_frame, FrameError, DEFAULT_MAX_FRAME};
pub use messages::*;

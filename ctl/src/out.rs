//! Writing to stdout. A reader that goes away (`gantryctl nodes | head -1`)
//! ends gantryctl quietly with status 0, as it would a Unix filter, instead
//! of a panic ("failed printing to stdout: Broken pipe").

use std::io::Write as _;

/// Writes `text` to stdout and flushes it.
pub fn write(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` for stdout through [`write`].
macro_rules! outln {
    () => { $crate::out::write("\n") };
    ($($arg:tt)*) => { $crate::out::write(&format!("{}\n", format_args!($($arg)*))) };
}

/// `print!` for stdout through [`write`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::write(&format!($($arg)*)) };
}

pub(crate) use {out, outln};

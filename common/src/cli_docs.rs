//! Man pages and shell completions generated from a binary's clap `Command`.
//!
//! Each binary answers a hidden `--generate KIND` (gantryctl: a hidden
//! `generate KIND` subcommand) by printing one of these to stdout, the way
//! ripgrep does with `rg --generate`. The packages are built by running the
//! freshly built binaries (packaging/build.sh), so the pages always match the
//! flags, and no second build of the command definitions is needed.

use std::io::Write;

/// What `--generate` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DocKind {
    /// The man page (roff), section 1 or 8 as the binary's command says.
    Man,
    /// Bash completion script.
    CompleteBash,
    /// Zsh completion script.
    CompleteZsh,
    /// Fish completion script.
    CompleteFish,
}

/// Writes `kind` for `cmd` to `out`. `section` is the man section ("1" for
/// commands, "8" for daemons).
pub fn generate(
    kind: DocKind,
    mut cmd: clap::Command,
    section: &str,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let name = cmd.get_name().to_string();
    match kind {
        DocKind::Man => clap_mangen::Man::new(cmd).section(section).render(out),
        DocKind::CompleteBash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, name, out);
            Ok(())
        }
        DocKind::CompleteZsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, name, out);
            Ok(())
        }
        DocKind::CompleteFish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, name, out);
            Ok(())
        }
    }
}

/// [`generate`] to stdout.
pub fn print(kind: DocKind, cmd: clap::Command, section: &str) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    generate(kind, cmd, section, &mut lock)?;
    lock.flush()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cmd() -> clap::Command {
        clap::Command::new("demo").about("Demo daemon").arg(clap::Arg::new("config").long("config"))
    }

    #[test]
    fn renders_each_kind() {
        for (kind, needle) in [
            (DocKind::Man, ".TH demo 8"),
            (DocKind::CompleteBash, "--config"),
            (DocKind::CompleteZsh, "#compdef demo"),
            (DocKind::CompleteFish, "complete -c demo"),
        ] {
            let mut out = Vec::new();
            generate(kind, cmd(), "8", &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains(needle), "{kind:?}: {text}");
        }
    }
}

//! The seam between a provider and the host commands it runs.

use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::lock;

/// A host command: a program, its arguments and, optionally, what it
/// reads on standard input. Never run through a shell.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostCommand {
    /// The program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Bytes for its standard input (secret: not shown by `Display` or `Debug`).
    pub stdin: Option<Vec<u8>>,
}

impl HostCommand {
    /// `program args...`.
    pub fn new<I, S>(program: impl Into<String>, args: I) -> HostCommand
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        HostCommand {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            stdin: None,
        }
    }

    /// The same command, reading `bytes` on standard input.
    pub fn with_stdin(mut self, bytes: Vec<u8>) -> HostCommand {
        self.stdin = Some(bytes);
        self
    }
}

/// `word`, quoted for a POSIX shell when it needs it.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '/' | '.' | '_' | '-' | '+' | '=' | ':' | ',' | '@' | '%')
        })
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

impl fmt::Display for HostCommand {
    /// As a shell would need it typed (for logs, errors and `--dry-run`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shell_word(&self.program))?;
        for a in &self.args {
            write!(f, " {}", shell_word(a))?;
        }
        if let Some(stdin) = &self.stdin {
            write!(f, " < ({} bytes)", stdin.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for HostCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostCommand({self})")
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CommandOutput {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    /// Exit code `code` with these outputs.
    pub fn new(code: Option<i32>, stdout: impl Into<Vec<u8>>, stderr: impl Into<Vec<u8>>) -> Self {
        CommandOutput {
            code,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    /// Exit code 0, printing `stdout`.
    pub fn ok(stdout: impl Into<Vec<u8>>) -> Self {
        CommandOutput::new(Some(0), stdout, Vec::new())
    }

    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// The variables of this process's environment that a child it starts
/// (a runner, QEMU, `qemu-img`, `socat`, `git`, `zfs`, ...) inherits: the
/// names below and `LC_*`, nothing else. A daemon's environment holds its
/// secrets (webhook secrets, tokens, database passwords); a child that
/// inherited them would hand them to whatever can read its
/// `/proc/PID/environ`, a job's step among others.
pub const CHILD_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
];

/// The one place that builds the environment of a process the providers
/// start: [`CHILD_ENV`] and `LC_*` from this process's environment.
/// Use it with `env_clear()`.
pub fn child_environment() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| {
            k.to_str()
                .is_some_and(|k| CHILD_ENV.contains(&k) || k.starts_with("LC_"))
        })
        .collect()
}

/// A `tokio` command for `program` with only [`child_environment`].
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command.env_clear().envs(child_environment());
    command
}

/// Runs host commands. The bhyve provider sends every command through one
/// of these: [`SystemRunner`] in production, [`DryRun`] for operators,
/// a recording or failing double in tests.
#[async_trait]
pub trait CommandRunner: Send + Sync + fmt::Debug {
    /// Runs `command` to its end. `Err` only when it could not be started.
    async fn run(&self, command: &HostCommand) -> std::io::Result<CommandOutput>;
}

/// Runs commands on this host (no shell), with a cap on what they print.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

/// The most of a command's output [`SystemRunner`] keeps (each stream).
pub const OUTPUT_CAP: usize = 1 << 20;

#[async_trait]
impl CommandRunner for SystemRunner {
    async fn run(&self, command: &HostCommand) -> std::io::Result<CommandOutput> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut child = clean_command(&command.program)
            .args(&command.args)
            .stdin(if command.stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take();
        let input = command.stdin.clone();
        let feed = async move {
            if let (Some(mut pipe), Some(bytes)) = (stdin, input) {
                let _ = pipe.write_all(&bytes).await;
            }
        };
        let read = |pipe: Option<_>| async move {
            let mut buf = Vec::new();
            if let Some(pipe) = pipe {
                let mut pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send> = pipe;
                let mut limited = (&mut pipe).take(OUTPUT_CAP as u64);
                let _ = limited.read_to_end(&mut buf).await;
                // Drain the rest so the command never blocks on a full pipe.
                let _ = tokio::io::copy(&mut pipe, &mut tokio::io::sink()).await;
            }
            buf
        };
        let out = child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
        let err = child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
        let ((), stdout, stderr) = tokio::join!(feed, read(out), read(err));
        let status = child.wait().await?;
        Ok(CommandOutput {
            code: status.code(),
            stdout,
            stderr,
        })
    }
}

/// Runs nothing: prints each command (as a shell would need it typed) to
/// standard output, or keeps it when made with [`DryRun::quiet`], and
/// answers as if it succeeded with no output. For `--dry-run`.
#[derive(Debug, Default)]
pub struct DryRun {
    quiet: bool,
    seen: Mutex<Vec<HostCommand>>,
}

impl DryRun {
    /// Prints each command.
    pub fn printing() -> DryRun {
        DryRun::default()
    }

    /// Prints nothing; [`DryRun::commands`] has them.
    pub fn quiet() -> DryRun {
        DryRun {
            quiet: true,
            seen: Mutex::new(Vec::new()),
        }
    }

    /// The commands so far.
    pub fn commands(&self) -> Vec<HostCommand> {
        lock(&self.seen).clone()
    }
}

#[async_trait]
impl CommandRunner for DryRun {
    async fn run(&self, command: &HostCommand) -> std::io::Result<CommandOutput> {
        if !self.quiet {
            use std::io::Write;
            let _ = writeln!(std::io::stdout(), "{command}");
        }
        lock(&self.seen).push(command.clone());
        Ok(CommandOutput::ok(Vec::new()))
    }
}

/// `text` with control characters (but newlines and tabs) shown as
/// `\u{..}` escapes: what a host command printed, safe for a log or a
/// terminal.
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

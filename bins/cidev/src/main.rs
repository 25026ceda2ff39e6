//! `cidev`: the Solstice CI developer tool. Validate, inspect and format
//! workflow files. This binary is wiring and output formatting only; the
//! language lives in `solstice-kdl`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

mod run;
mod terminal;
use serde::Serialize;
use solstice_kdl::{ParseError, ParseOptions, Plan, Workflow};
use terminal::clean;

/// Default workflow location inside a repository.
const DEFAULT_WORKFLOW: &str = ".solstice/workflow.kdl";

/// Exit codes: 0 valid, 1 invalid workflow, 2 usage or I/O error.
const EXIT_INVALID: u8 = 1;
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(name = "cidev", version, about = "Solstice CI developer tool")]
struct Cli {
    /// When to colour the output: `auto` (on a terminal, unless NO_COLOR
    /// is set), `always` or `never`.
    #[arg(long, value_enum, global = true, default_value_t = terminal::ColorChoice::Auto)]
    color: terminal::ColorChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check workflow files and print every problem.
    Validate {
        /// Files to check (default: .solstice/workflow.kdl).
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Show jobs, steps, matrix expansion, execution order and triggers.
    Inspect {
        /// File to inspect (default: .solstice/workflow.kdl).
        file: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Run the workflow of this checkout locally, with the production engine and runner.
    Run(Box<run::RunArgs>),
    /// Print a shell completion script (e.g. `cidev completions bash > /etc/bash_completion.d/cidev`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `cidev man > cidev.1`.
    Man,
    /// The runner, for the local provider (reads SOLSTICE_ENDPOINT and SOLSTICE_JOB_TOKEN).
    #[command(hide = true)]
    Runner,
    /// Rewrite files in the canonical layout, keeping comments.
    Fmt {
        /// Files to format (default: .solstice/workflow.kdl).
        files: Vec<PathBuf>,
        /// Do not write; exit 1 if a file is not formatted.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Human,
    Json,
}

fn main() -> ExitCode {
    let code = dispatch();
    match terminal::failure() {
        Some(e) => {
            errln!("error: cannot write to standard output: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        None => code,
    }
}

fn dispatch() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    terminal::set_color(cli.color);
    match cli.command {
        Command::Validate { files, format } => validate(&default_files(files), format),
        Command::Inspect { file, format } => {
            inspect(&file.unwrap_or_else(|| DEFAULT_WORKFLOW.into()), format)
        }
        Command::Fmt { files, check } => fmt(&default_files(files), check),
        Command::Run(args) => {
            init_tracing();
            let file = args.file.clone().unwrap_or_else(|| DEFAULT_WORKFLOW.into());
            let workflow = match load(&file) {
                Ok(w) => w,
                Err(f) => return fail(f),
            };
            run::run(*args, file, workflow)
        }
        Command::Runner => runner(),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "cidev", &mut out);
            terminal::out(&out);
            ExitCode::SUCCESS
        }
        Command::Man => {
            let mut out = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut out) {
                Ok(()) => {
                    terminal::out(&out);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    errln!("error: {e}");
                    ExitCode::from(EXIT_USAGE)
                }
            }
        }
    }
}

/// One tracing setup for cidev: warnings and errors to stderr, or `SOLSTICE_LOG`.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SOLSTICE_LOG")
        .unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(terminal::color_on_stderr())
        .with_env_filter(filter)
        .try_init();
}

/// The built-in runner: what `solstice-runner` does, so the local provider
/// works with nothing but cidev built.
fn runner() -> ExitCode {
    init_tracing();
    ExitCode::from(solstice_core::runner::main_from_environment("cidev runner"))
}

fn default_files(files: Vec<PathBuf>) -> Vec<PathBuf> {
    if files.is_empty() {
        vec![PathBuf::from(DEFAULT_WORKFLOW)]
    } else {
        files
    }
}

/// Why a file could not be turned into a workflow.
enum Failure {
    Io(String),
    Invalid(Box<ParseError>),
}

fn load(path: &Path) -> Result<Workflow, Failure> {
    let options = ParseOptions::default();
    let bytes = read(path, &options)?;
    solstice_kdl::parse_bytes(&path.display().to_string(), &bytes, &options)
        .map_err(|e| Failure::Invalid(Box::new(e)))
}

/// Reads at most one byte more than the limit, so a huge file costs nothing.
fn read(path: &Path, options: &ParseOptions) -> Result<Vec<u8>, Failure> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| Failure::Io(format!("{}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(options.max_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::Io(format!("{}: {e}", path.display())))?;
    Ok(bytes)
}

/// The rendered problems, safe for the terminal (names in messages come
/// from the file and may hold control characters).
fn render(err: &ParseError) -> String {
    let color = terminal::color_on_stderr();
    terminal::clean_lines(&err.render(color, terminal::width()), color).into_owned()
}

/// The one-line summary of a parse error (`FILE: N problems`), safe to print.
fn headline(err: &ParseError) -> String {
    clean(&err.to_string()).into_owned()
}

#[derive(Serialize)]
struct FileReport {
    file: String,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    problems: Vec<solstice_kdl::ProblemRecord>,
}

fn validate(files: &[PathBuf], format: Format) -> ExitCode {
    let mut worst = 0u8;
    let mut reports = Vec::new();
    for path in files {
        let name = path.display().to_string();
        let report = match load(path) {
            Ok(_) => {
                if format == Format::Human {
                    outln!("{}: valid", clean(&name));
                }
                FileReport {
                    file: name,
                    valid: true,
                    error: None,
                    problems: Vec::new(),
                }
            }
            Err(Failure::Io(msg)) => {
                worst = worst.max(EXIT_USAGE);
                if format == Format::Human {
                    errln!("error: {}", clean(&msg));
                }
                FileReport {
                    file: name,
                    valid: false,
                    error: Some(msg),
                    problems: Vec::new(),
                }
            }
            Err(Failure::Invalid(err)) => {
                worst = worst.max(EXIT_INVALID);
                if format == Format::Human {
                    terminal::err(render(&err).as_bytes());
                    errln!("{}", headline(&err));
                }
                FileReport {
                    file: name,
                    valid: false,
                    error: None,
                    problems: err.to_json_records(),
                }
            }
        };
        reports.push(report);
    }
    if format == Format::Json {
        print_json(&reports);
    }
    ExitCode::from(worst)
}

/// Replaces a file's content atomically: a temporary file beside it (in
/// the directory of the file a symlink points to) with the same
/// permissions, renamed over it. A crash or a full disk leaves the old
/// file whole, never half a file.
fn replace_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let target = std::fs::canonicalize(path)?;
    let permissions = std::fs::metadata(&target)?.permissions();
    let dir = target.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".cidev-fmt-")
        .tempfile_in(dir)?;
    temp.write_all(content)?;
    temp.as_file().sync_all()?;
    std::fs::set_permissions(temp.path(), permissions)?;
    temp.persist(&target).map_err(|e| e.error)?;
    Ok(())
}

fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_vec_pretty(value) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            terminal::out(&bytes);
        }
        Err(e) => errln!("error: {e}"),
    }
}

fn fail(failure: Failure) -> ExitCode {
    match failure {
        Failure::Io(msg) => {
            errln!("error: {}", clean(&msg));
            ExitCode::from(EXIT_USAGE)
        }
        Failure::Invalid(err) => {
            terminal::err(render(&err).as_bytes());
            errln!("{}", headline(&err));
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// `fail`, in the JSON form of `validate` when JSON was asked for: a
/// program reading standard output gets JSON either way.
fn fail_as(path: &Path, failure: Failure, format: Format) -> ExitCode {
    if format == Format::Human {
        return fail(failure);
    }
    let (report, code) = match failure {
        Failure::Io(msg) => (
            FileReport {
                file: path.display().to_string(),
                valid: false,
                error: Some(msg),
                problems: Vec::new(),
            },
            EXIT_USAGE,
        ),
        Failure::Invalid(err) => (
            FileReport {
                file: path.display().to_string(),
                valid: false,
                error: None,
                problems: err.to_json_records(),
            },
            EXIT_INVALID,
        ),
    };
    print_json(&report);
    ExitCode::from(code)
}

#[derive(Serialize)]
struct Inspection<'a> {
    file: String,
    workflow: &'a Workflow,
    plan: &'a Plan,
    stages: Vec<Vec<&'a str>>,
}

fn inspect(path: &Path, format: Format) -> ExitCode {
    let workflow = match load(path) {
        Ok(w) => w,
        Err(f) => return fail_as(path, f, format),
    };
    let plan = match workflow.plan() {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            if format == Format::Json {
                print_json(&FileReport {
                    file: path.display().to_string(),
                    valid: false,
                    error: Some(msg),
                    problems: Vec::new(),
                });
            } else {
                errln!("error: {}", clean(&msg));
            }
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let stages: Vec<Vec<&str>> = plan
        .stages()
        .iter()
        .map(|s| s.iter().map(|j| j.id.as_str()).collect())
        .collect();
    if format == Format::Json {
        print_json(&Inspection {
            file: path.display().to_string(),
            workflow: &workflow,
            plan: &plan,
            stages,
        });
        return ExitCode::SUCCESS;
    }
    terminal::out(describe(path, &workflow, &plan, &stages).as_bytes());
    ExitCode::SUCCESS
}

fn describe(path: &Path, wf: &Workflow, plan: &Plan, stages: &[Vec<&str>]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "workflow {} ({})",
        clean(wf.name.as_deref().unwrap_or("(unnamed)")),
        clean(&path.display().to_string())
    );
    let triggers = wf
        .on
        .clone()
        .unwrap_or_else(solstice_kdl::Triggers::default_when_absent);
    let _ = writeln!(
        s,
        "\ntriggers{}:",
        if wf.on.is_none() { " (default)" } else { "" }
    );
    for (name, f) in [
        ("push", &triggers.push),
        ("pull_request", &triggers.pull_request),
    ] {
        if let Some(f) = f {
            let mut parts = Vec::new();
            for (what, list) in [
                ("branches", &f.branches),
                ("tags", &f.tags),
                ("paths", &f.paths),
                ("paths_ignore", &f.paths_ignore),
            ] {
                if !list.is_empty() {
                    parts.push(format!("{what} {}", clean(&list.join(" "))));
                }
            }
            let _ = writeln!(
                s,
                "  {name}: {}",
                if parts.is_empty() {
                    "any".to_string()
                } else {
                    parts.join("; ")
                }
            );
        }
    }
    if triggers.manual {
        let _ = writeln!(s, "  manual");
    }
    for c in &triggers.cron {
        let _ = writeln!(s, "  cron: {}", clean(&c.to_string()));
    }
    let _ = writeln!(s, "\njobs ({} after matrix expansion):", plan.jobs.len());
    for pj in &plan.jobs {
        let job = &pj.job;
        let mut facts = vec![format!(
            "runs_on {}",
            clean(job.runs_on.as_deref().unwrap_or("(default)"))
        )];
        if !job.needs.is_empty() {
            facts.push(format!("needs {}", clean(&job.needs.join(", "))));
        }
        if let Some(t) = job.timeout {
            facts.push(format!("timeout {t}"));
        }
        if job.retry > 0 {
            facts.push(format!("retry {}", job.retry));
        }
        let _ = writeln!(s, "  {}  [{}]", clean(&pj.id), facts.join("; "));
        for (i, step) in job.steps.iter().enumerate() {
            let mut extra = Vec::new();
            if let Some(t) = step.timeout {
                extra.push(format!("timeout {t}"));
            }
            if step.continue_on_error {
                extra.push("continue_on_error".to_string());
            }
            let extra = if extra.is_empty() {
                String::new()
            } else {
                format!("  [{}]", extra.join("; "))
            };
            let _ = writeln!(s, "    {}. {}{extra}", i + 1, clean(&step.display_name()));
        }
        if !job.artifacts.is_empty() {
            let _ = writeln!(s, "    artifacts: {}", clean(&job.artifacts.join(" ")));
        }
    }
    let _ = writeln!(s, "\nexecution order:");
    for (i, stage) in stages.iter().enumerate() {
        let _ = writeln!(s, "  stage {}: {}", i + 1, clean(&stage.join(", ")));
    }
    s
}

fn fmt(files: &[PathBuf], check: bool) -> ExitCode {
    let options = ParseOptions::default();
    let mut worst = 0u8;
    for path in files {
        let name = path.display().to_string();
        let result = read(path, &options).and_then(|bytes| {
            let text = solstice_kdl::decode(&name, &bytes, &options)
                .map_err(|e| Failure::Invalid(Box::new(e)))?;
            let formatted = solstice_kdl::format(&name, text, &options)
                .map_err(|e| Failure::Invalid(Box::new(e)))?;
            Ok((text.to_string(), formatted))
        });
        let (original, formatted) = match result {
            Ok(pair) => pair,
            Err(f) => {
                worst = worst.max(match fail(f) {
                    c if c == ExitCode::from(EXIT_USAGE) => EXIT_USAGE,
                    _ => EXIT_INVALID,
                });
                continue;
            }
        };
        if original == formatted {
            continue;
        }
        let name = clean(&name);
        if check {
            outln!("{name}: not formatted");
            worst = worst.max(EXIT_INVALID);
        } else if let Err(e) = replace_file(path, formatted.as_bytes()) {
            errln!("error: {name}: {e}");
            worst = worst.max(EXIT_USAGE);
        } else {
            outln!("{name}: formatted");
        }
    }
    ExitCode::from(worst)
}

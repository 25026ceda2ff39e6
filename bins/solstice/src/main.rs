//! `solstice`: the all-in-one daemon. Forge webhooks in, jobs run by the
//! engine on this host (local provider, SQLite, the in-process queue:
//! no external services), statuses back to the forge, and an HTTP server
//! with job pages and a JSON API.
//!
//! Exit codes: 0 stopped cleanly; 1 a runtime failure; 2 bad usage or a
//! broken configuration (nothing was started).

mod api;
mod auth;
mod body;
mod config;
mod cron;
mod daemon;
mod http;
mod inbox;
mod intake;
mod listener;
mod pages;
mod policy;
mod report;
mod secrets;
mod vms;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "solstice",
    version,
    about = "Solstice CI: the all-in-one daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve webhooks, run jobs, report statuses, serve job pages and the API.
    #[command(after_help = config::environment_help())]
    Serve {
        /// The configuration file (KDL). Without one, the defaults and the
        /// environment: 127.0.0.1:8080, state in ./solstice-state.
        #[arg(long, short, env = "SOLSTICE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The integration daemon of a fleet: webhooks, planning, statuses, the
    /// API and job pages; runs no job. Needs `database` and `queue`.
    #[command(after_help = config::environment_help())]
    Integration {
        /// The configuration file (KDL).
        #[arg(long, short, env = "SOLSTICE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// An orchestrator of a fleet: runs the jobs of the labels it serves
    /// (`labels`), up to `capacity`, in VMs of its providers. Needs
    /// `database` and `queue`.
    #[command(after_help = config::environment_help())]
    Orchestrator {
        /// The configuration file (KDL).
        #[arg(long, short, env = "SOLSTICE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and exit (0 valid, 2 not).
    CheckConfig {
        /// The configuration file (KDL).
        #[arg(long, short, env = "SOLSTICE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Start one VM of a label as the daemon would, wait until it runs,
    /// destroy it (exit 0 when it came up, 1 when not).
    VmCheck {
        /// The configuration file (KDL).
        #[arg(long, short, env = "SOLSTICE_CONFIG")]
        config: Option<PathBuf>,
        /// The `runs_on` label whose provider and image to try.
        #[arg(long)]
        label: String,
        /// Run nothing: print the commands (bhyve: every host command of
        /// provision and teardown; QEMU: qemu-img and QEMU's command line).
        #[arg(long)]
        dry_run: bool,
    },
    /// Golden VM images from recipes (see docs/vms.md).
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// The runner, for the local provider (reads SOLSTICE_ENDPOINT and SOLSTICE_JOB_TOKEN).
    #[command(hide = true)]
    Runner,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build the image of a recipe (as root): exit 0 built or up to date,
    /// 1 the build failed, 2 the recipe has mistakes.
    Build {
        /// The recipe: a file, or a directory holding `image.kdl`.
        recipe: PathBuf,
        /// Where the image goes (default: CACHE/NAME).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where images go, this one's bases too
        /// (default: ~/.cache/solstice/images).
        #[arg(long, env = "SOLSTICE_IMAGE_CACHE")]
        cache: Option<PathBuf>,
        /// The solstice-runner to put in the image, statically linked
        /// (images/build.sh builds one); default: `solstice-runner` beside
        /// this program.
        #[arg(long, env = "SOLSTICE_RUNNER")]
        runner: Option<PathBuf>,
        /// Build again even when the image is up to date.
        #[arg(long)]
        rebuild: bool,
    },
    /// Check a recipe and exit (0 valid, 2 not).
    Check {
        /// The recipe: a file, or a directory holding `image.kdl`.
        recipe: PathBuf,
    },
}

/// `SOLSTICE_LOG` (default `info`). The database pool's own warnings (a
/// line per pooled connection when PostgreSQL restarts) are off unless the
/// filter names `sqlx`: the daemon says once that the store is away.
fn log_filter(spec: Option<&str>) -> tracing_subscriber::EnvFilter {
    let spec = spec.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    let spec = if spec.contains("sqlx") {
        spec.to_string()
    } else {
        format!("{spec},sqlx_core::pool=error")
    };
    // A filter that does not parse: the default.
    tracing_subscriber::EnvFilter::try_new(spec).unwrap_or_else(|_| log_filter(None))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(
            std::env::var_os("NO_COLOR").is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .with_env_filter(log_filter(std::env::var("SOLSTICE_LOG").ok().as_deref()))
        .init();
    match cli.command {
        Command::Runner => ExitCode::from(solstice_core::runner::main_from_environment(
            "solstice runner",
        )),
        Command::CheckConfig { config } => match load(config) {
            Ok(config) => {
                for warning in vms::check(&config) {
                    eprintln!("warning: {warning}");
                }
                // As `serve` (or an orchestrator) would start with it.
                match daemon::check_isolation(&config, daemon::Role::AllInOne) {
                    Ok(Some(warning)) => eprintln!("warning: {warning}"),
                    Ok(None) => {}
                    Err(why) => {
                        eprintln!("error: {why}");
                        return ExitCode::from(2);
                    }
                }
                println!("the configuration is valid");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::VmCheck {
            config,
            label,
            dry_run,
        } => {
            let config = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let result = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| e.into())
                .and_then(|rt| rt.block_on(vms::vm_check(&config, &label, dry_run)));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", daemon::chain(&*e));
                    ExitCode::from(1)
                }
            }
        }
        Command::Image { command } => image(command),
        Command::Serve { config } => run_daemon(config, daemon::Role::AllInOne),
        Command::Integration { config } => run_daemon(config, daemon::Role::Integration),
        Command::Orchestrator { config } => run_daemon(config, daemon::Role::Orchestrator),
    }
}

fn run_daemon(config: Option<PathBuf>, role: daemon::Role) -> ExitCode {
    let config = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(why) = daemon::check_role(&config, role) {
        eprintln!("error: {why}");
        return ExitCode::from(2);
    }
    match daemon::check_isolation(&config, role) {
        Ok(Some(warning)) => tracing::warn!("{warning}"),
        Ok(None) => {}
        Err(why) => {
            eprintln!("error: {why}");
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(daemon::serve(config, role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", daemon::chain(&*e));
            ExitCode::from(1)
        }
    }
}

fn image(command: ImageCommand) -> ExitCode {
    use solstice_vmm::image::{BuildOptions, ImageError, build, load_recipe};
    let color = std::env::var_os("NO_COLOR").is_none()
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let report = |e: ImageError| match e {
        ImageError::Recipe { source, .. } => {
            eprint!("{}", source.render(color, 100));
            eprintln!("error: the recipe has mistakes");
            ExitCode::from(2)
        }
        other => {
            eprintln!("error: {}", daemon::chain(&other));
            ExitCode::from(1)
        }
    };
    match command {
        ImageCommand::Check { recipe } => match load_recipe(&recipe) {
            Ok((file, r)) => {
                say(&format!(
                    "{}: image {} for {}",
                    file.display(),
                    r.name,
                    r.labels.join(", ")
                ));
                ExitCode::SUCCESS
            }
            Err(e) => report(e),
        },
        ImageCommand::Build {
            recipe,
            out,
            cache,
            runner,
            rebuild,
        } => {
            let Some(cache) = cache.or_else(BuildOptions::default_cache) else {
                eprintln!("error: no image cache: set --cache, HOME or XDG_CACHE_HOME");
                return ExitCode::from(2);
            };
            let runner = runner.or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|p| p.parent().map(|d| d.join("solstice-runner")))
                    .filter(|p| p.is_file())
            });
            let Some(runner) = runner else {
                eprintln!(
                    "error: no solstice-runner to put in the image: give --runner (images/build.sh builds a static one)"
                );
                return ExitCode::from(2);
            };
            let mut options = BuildOptions::new(cache, runner);
            options.out = out;
            options.rebuild = rebuild;
            let mut progress = |line: &str| {
                use std::io::Write;
                // A closed stderr does not stop the build.
                let _ = writeln!(std::io::stderr(), "image: {line}");
            };
            match build(&recipe, &options, &mut progress) {
                Ok(built) => {
                    say(&built.dir.display().to_string());
                    ExitCode::SUCCESS
                }
                Err(e) => report(e),
            }
        }
    }
}

/// One line on stdout; a closed pipe (`| head -0`) is not a panic.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn load(path: Option<PathBuf>) -> Result<config::Config, ExitCode> {
    config::Config::load(path.as_deref(), &|k| std::env::var(k).ok()).map_err(|e| {
        match e {
            config::ConfigError::File(e) => {
                let color = std::env::var_os("NO_COLOR").is_none()
                    && std::io::IsTerminal::is_terminal(&std::io::stderr());
                eprint!("{}", e.render(color, 100));
                eprintln!("error: the configuration has mistakes; the daemon did not start");
            }
            other => eprintln!("error: {}", daemon::chain(&other)),
        }
        ExitCode::from(2)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pools_warnings_are_off_unless_asked_for() {
        for spec in [None, Some(""), Some("info"), Some("debug,solstice=trace")] {
            let filter = super::log_filter(spec).to_string();
            assert!(
                filter.contains("sqlx_core::pool=error"),
                "{spec:?}: {filter}"
            );
        }
        let filter = super::log_filter(Some("info,sqlx=debug")).to_string();
        assert!(!filter.contains("sqlx_core::pool=error"), "{filter}");
        // A filter that does not parse: the default, not a crash.
        let filter = super::log_filter(Some("[[[")).to_string();
        assert!(filter.contains("sqlx_core::pool=error"), "{filter}");
    }
}

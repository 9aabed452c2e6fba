//! The `hello-world` binary: parse the command line, start telemetry, run until a signal, and
//! turn failure into an exit code (64 for bad configuration, as `sysexits.h` has it).

use std::process::ExitCode;

use hello_world::config::{Cli, Command, ConfigError};
use hello_world::server::Server;

// mimalloc everywhere: musl's allocator is slow under threads, glibc's costs more per request
// (bench/RESULTS.md has the profiles). Its settings (how much address space an arena reserves,
// no transparent huge pages) are its own documented MIMALLOC_* variables, which the image and
// the manifests set (deploy/Dockerfile says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a configuration the program cannot use (EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::parse_from_env() {
        Ok(cli) => cli,
        Err(err) => return exit_for_parse_error(err),
    };
    match cli.command {
        Command::Serve(args) => {
            let args = *args;
            let config = match args.resolve() {
                Ok(config) => config,
                Err(err) => return bad_config(&err),
            };
            let logs =
                hello_world::telemetry::subscriber(config.log_format, &config.log, std::io::stdout);
            if let Err(err) = logs.and_then(hello_world::telemetry::install) {
                eprintln!("hello-world: {err:#}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
            let runtime = match server_runtime() {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("hello-world: cannot start the runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async {
                let server = match Server::bind(config).await {
                    Ok(server) => server,
                    Err(err) => {
                        tracing::error!(error = format!("{err:#}"), "cannot start");
                        eprintln!("hello-world: {err:#}");
                        return ExitCode::FAILURE;
                    }
                };
                match server.run(hello_world::lifecycle::shutdown_signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(err) => {
                        tracing::error!(error = format!("{err:#}"), "stopped with an error");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Healthcheck(args) => {
            let port = match args.port.resolve() {
                Ok(port) => port,
                Err(err) => return bad_config(&err),
            };
            match hello_world::healthcheck::probe(port, args.timeout) {
                Ok(()) => ExitCode::SUCCESS,
                Err(reason) => {
                    eprintln!("unhealthy: {reason}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("hello-world check: cannot start the runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(hello_world::check::run(args))
        }
    }
}

/// The server's runtime: one thread per CPU the process may use. With one CPU (a process
/// pinned to a core, or a container limited to less than two: `available_parallelism` reads
/// both the affinity mask and the cgroup quota), a single-threaded runtime does the same work
/// without the multi-threaded scheduler's cross-thread bookkeeping.
fn server_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |cpus| cpus.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()
}

fn bad_config(err: &ConfigError) -> ExitCode {
    eprintln!("hello-world: {err}");
    ExitCode::from(EXIT_BAD_CONFIG)
}

/// `--help` and `--version` exit 0; `check` keeps clap's usage status 2 (what scripts of a
/// load-check tool expect); for the server, every bad flag or variable is a configuration error.
fn exit_for_parse_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    let is_check = std::env::args().nth(1).as_deref() == Some("check");
    if is_check {
        let _ = err.print();
        return ExitCode::from(2);
    }
    match ConfigError::from_clap(&err) {
        Some(config_error) => bad_config(&config_error),
        None => {
            let _ = err.print();
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

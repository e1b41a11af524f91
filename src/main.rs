//! The `kizen-gateway` binary: `serve` (the default), `check-config` and `dev`.
#![forbid(unsafe_code)]

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

// Many small allocations per request (headers, futures, JSON): mimalloc serves them faster
// than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use kizen_gateway::{
    App, Config,
    config::{ConfigError, Overrides},
    observability::logs,
};
#[cfg(feature = "dev")]
use kizen_gateway::{config::LogConfig, dev};

#[derive(Parser)]
#[command(version, about = "Authenticating gateway for Kizen file uploads")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (TOML), applied over the built-in defaults.
    #[arg(long, short, global = true, env = "KIZEN_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides server.listen.
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Validate the configuration (keys and secrets included) and exit.
    CheckConfig,
    /// Run against a built-in local stand-in of the Kizen API, with a dev token.
    #[cfg(feature = "dev")]
    Dev {
        /// Address of the stand-in upstream.
        #[arg(long, default_value = "127.0.0.1:8788")]
        standin_listen: SocketAddr,
        /// A browser origin the gateway answers CORS for, e.g. http://localhost:5173 (repeatable).
        #[arg(long = "allow-origin")]
        allow_origins: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(serve(cli.config, cli.listen)),
        Command::CheckConfig => check_config(cli.config, cli.listen),
        #[cfg(feature = "dev")]
        Command::Dev {
            standin_listen,
            allow_origins,
        } => runtime.block_on(dev(cli.listen, standin_listen, allow_origins)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("kizen-gateway: {message}");
    ExitCode::FAILURE
}

fn load(file: Option<PathBuf>, listen: Option<SocketAddr>) -> Result<Config, String> {
    Config::load(file.as_deref(), &Overrides { listen }).map_err(|e: ConfigError| e.to_string())
}

fn check_config(file: Option<PathBuf>, listen: Option<SocketAddr>) -> Result<(), String> {
    let config = load(file, listen)?;
    // Building the app reads every key file and secret, exactly as serving would.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async { App::from_config(config).await.map(|_| ()) })?;
    println!("configuration is valid");
    Ok(())
}

async fn serve(file: Option<PathBuf>, listen: Option<SocketAddr>) -> Result<(), String> {
    let config = load(file, listen)?;
    // Log lines are formatted on the request's thread and written to stdout by a thread of their
    // own, so a slow log pipe never stalls a request; only a backlog of 128k lines would make
    // requests wait (lines are never dropped: the audit trail is in them). Lines reach stdout as
    // soon as the thread finds no more to write.
    let (stdout, _flush_at_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("kizen-gateway-log")
        // Buffered: the writer thread sends what piled up in one write, then flushes.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ));
    let telemetry =
        logs::init_tracing_with_telemetry(&config.log, config.telemetry.otlp_traces, stdout)?;
    let addr = config.server.listen;
    let app = App::from_config(config).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot bind server.listen {addr}: {e}"))?;
    let admin_addr = app.config.admin.listen;
    let admin = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|e| format!("cannot bind admin.listen {admin_addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let admin_bound = admin.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(addr = %bound, admin = %admin_bound, version = env!("CARGO_PKG_VERSION"), "kizen-gateway listening");
    let served =
        kizen_gateway::run_with_admin(listener, Some(admin), app, kizen_gateway::shutdown_signal())
            .await
            .map_err(|e| e.to_string());
    // Off the runtime's worker: the exporter's blocking client must not run inside it.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    served
}

#[cfg(feature = "dev")]
async fn dev(
    listen: Option<SocketAddr>,
    standin_listen: SocketAddr,
    allow_origins: Vec<String>,
) -> Result<(), String> {
    let listen = listen.unwrap_or_else(|| "127.0.0.1:8787".parse().expect("valid address"));
    let setup = dev::setup(listen, standin_listen, &allow_origins).await?;
    logs::init_tracing(
        &LogConfig {
            level: "info".into(),
            format: kizen_gateway::config::LogFormat::Text,
        },
        std::io::stderr,
    )?;
    tracing::warn!("DEV MODE: upstream is the local stand-in, not Kizen");
    let standin_router = setup.standin_router;
    tokio::spawn(async move {
        let _ = axum::serve(setup.standin_listener, standin_router).await;
    });
    print!("{}", setup.instructions);
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    kizen_gateway::run(setup.gateway, setup.app, kizen_gateway::shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

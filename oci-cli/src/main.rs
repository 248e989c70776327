//! `vessel-runc`: see the crate's lib.rs and README.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use liboci_cli::{CommonCmd, StandardCmd};
use vessel_protocol::errors::chain;
use vessel_protocol::log_format::LogFormat;
use vessel_runc::cli::{Cli, Cmd};
use vessel_runc::commands;
use vessel_runc::store::{Store, DEFAULT_ROOT};
use vessel_runc::CliError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!(
            "vessel-runc version {}\nspec: {}",
            env!("CARGO_PKG_VERSION"),
            commands::OCI_VERSION
        );
        return ExitCode::SUCCESS;
    }
    let format: LogFormat = match cli.global.log_format.as_deref().unwrap_or("text").parse() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let log = cli.global.log.as_deref();
    if let Err(e) = vessel_runc::logging::init(log, format, cli.global.debug) {
        eprintln!("opening the log file: {e}");
        return ExitCode::FAILURE;
    }
    match run(&cli) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            let message = chain(&e);
            // runc's way: into the log (the engine reads it back) and onto stderr.
            log::error!("{message}");
            if log.is_some() {
                eprintln!("{message}");
            }
            ExitCode::FAILURE
        }
    }
}

fn print(text: String) -> i32 {
    println!("{text}");
    0
}

fn run(cli: &Cli) -> Result<i32, CliError> {
    let store = Store::new(
        cli.global
            .root
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_ROOT)),
    );
    let config = cli.vessel_config.as_deref();
    let log = cli.global.log.as_deref();
    let Some(cmd) = &cli.cmd else {
        return Err(CliError::InvalidArgument(
            "no command given (see --help)".into(),
        ));
    };
    match cmd {
        Cmd::Standard(cmd) => match cmd.as_ref() {
            StandardCmd::Create(args) => commands::create(&store, args, config, log).map(|()| 0),
            StandardCmd::Start(a) => commands::start(&store, &a.container_id).map(|()| 0),
            StandardCmd::State(a) => commands::state(&store, &a.container_id).map(print),
            StandardCmd::Kill(a) => {
                commands::kill(&store, &a.container_id, Some(&a.signal), a.all).map(|()| 0)
            }
            StandardCmd::Delete(a) => {
                commands::delete(&store, &a.container_id, a.force, config).map(|()| 0)
            }
        },
        Cmd::Common(cmd) => match cmd.as_ref() {
            CommonCmd::Exec(args) => vessel_runc::exec::exec(&store, args),
            CommonCmd::Ps(a) => commands::ps(&store, &a.container_id, &a.format).map(print),
            CommonCmd::Pause(a) => commands::pause(&store, &a.container_id, true).map(|()| 0),
            CommonCmd::Resume(a) => commands::pause(&store, &a.container_id, false).map(|()| 0),
            CommonCmd::List(a) => commands::list(&store, &a.format, a.quiet).map(print),
            CommonCmd::Features(_) => Ok(print(
                serde_json::to_string_pretty(&commands::features()).unwrap_or_default(),
            )),
            other => Err(CliError::InvalidArgument(format!(
                "{}: not supported by vessel-runc",
                command_name(other)
            ))),
        },
    }
}

fn command_name(cmd: &CommonCmd) -> &'static str {
    match cmd {
        CommonCmd::Checkpointt(_) => "checkpoint",
        CommonCmd::Events(_) => "events",
        CommonCmd::Run(_) => "run",
        CommonCmd::Update(_) => "update",
        CommonCmd::Spec(_) => "spec",
        _ => "this command",
    }
}

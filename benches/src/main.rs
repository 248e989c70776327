//! `vessel-bench`: see the library crate and benches/README.md.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use vessel_bench::cli::Cli;
use vessel_bench::report::render_table;

struct StderrLogger {
    start: Instant,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let t = self.start.elapsed().as_secs_f64();
            let line = format!("[{t:8.1}s {:<5}] {}\n", record.level(), record.args());
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// `--render`: the table and charts of an earlier run, again.
fn render(results: &std::path::Path, out: &std::path::Path) -> ExitCode {
    let written = vessel_bench::report::read_report(results)
        .and_then(|r| vessel_bench::report::write_all(&r, out).map(|w| (r, w)));
    match written {
        Ok((report, paths)) => {
            print!("{}", render_table(&report));
            for p in paths {
                eprintln!("wrote {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vessel-bench: --render {}: {e}", results.display());
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logger = Box::leak(Box::new(StderrLogger {
        start: Instant::now(),
    }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(cli.log_level);
    }
    if let Some(results) = &cli.render {
        return render(results, &cli.out);
    }
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    match vessel_bench::run::run(&cli, command_line) {
        Ok(outcome) => {
            print!("{}", render_table(&outcome.report));
            for p in &outcome.written {
                eprintln!("wrote {}", p.display());
            }
            if outcome.report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "vessel-bench: {} measure(s) failed; see the failures above and results.json",
                    outcome.report.failures.len()
                );
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("vessel-bench: {}", vessel_protocol::errors::chain(&e));
            ExitCode::from(2)
        }
    }
}

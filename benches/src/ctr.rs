//! `ctr` against the benchmark's containerd, every call bounded by a timeout.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::exec::{run_timed, ExecError, Timed};

/// Bound on the small housekeeping calls (`tasks ls`, `kill`, `delete`).
pub const HOUSEKEEPING_TIMEOUT: Duration = Duration::from_secs(60);

/// A runtime under test, as containerd knows it.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Shown in results: "runc", "vessel (cold)".
    pub name: String,
    /// containerd's runtime type.
    pub runtime_type: String,
    /// Bound on one container operation (create+start+wait+delete).
    pub timeout: Duration,
    /// Short tag for container ids.
    pub tag: String,
    /// Start-latency runs measured, after `warmup` discarded ones.
    pub runs: usize,
    pub warmup: usize,
}

impl Runtime {
    pub fn is_vessel(&self) -> bool {
        self.runtime_type.contains("vessel")
    }
}

/// One row of `ctr tasks ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    pub id: String,
    pub pid: u32,
    pub status: String,
}

/// Parses `ctr tasks ls` (a header line, then `ID PID STATUS`).
pub fn parse_tasks(text: &str) -> Vec<TaskRow> {
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("TASK"))
        .skip(1)
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let id = w.next()?.to_string();
            let pid = w.next()?.parse().ok()?;
            let status = w.next()?.to_string();
            Some(TaskRow { id, pid, status })
        })
        .collect()
}

/// The `ctr` client of one containerd.
#[derive(Debug, Clone)]
pub struct Ctr {
    pub address: PathBuf,
    pub namespace: String,
}

impl Ctr {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.address)
            .args(["--namespace", &self.namespace])
            .args(args);
        cmd
    }

    /// Runs `ctr args` with a deadline; non-zero exits come back as `Ok` (see `Timed::check`).
    pub fn run(&self, args: &[&str], what: &str, timeout: Duration) -> Result<Timed, ExecError> {
        run_timed(self.command(args), what, timeout)
    }

    /// `ctr run -d` of an idle pod (`sleep`) with runtime `rt`: the step's description (for
    /// errors) and its result.
    pub fn run_idle_pod(
        &self,
        rt: &Runtime,
        id: &str,
        timeout: Duration,
    ) -> (String, Result<Timed, ExecError>) {
        let what = format!("ctr run -d ({}) {id} sleep", rt.name);
        let args = [
            "run",
            "-d",
            "--runtime",
            &rt.runtime_type,
            vessel_tests::containerd::BUSYBOX_REF,
            id,
            "sleep",
            "1000000",
        ];
        let r = self.run(&args, &what, timeout);
        (what, r)
    }

    /// `ctr tasks ls`.
    pub fn tasks(&self) -> Result<Vec<TaskRow>, ExecError> {
        let t = self
            .run(&["tasks", "ls"], "ctr tasks ls", HOUSEKEEPING_TIMEOUT)?
            .check("ctr tasks ls")?;
        Ok(parse_tasks(&t.stdout))
    }

    /// Removes container `id` whatever state it is in (SIGKILL the task, delete it, delete
    /// the container), each step bounded; returns what could not be done.
    pub fn remove(&self, id: &str, timeout: Duration) -> Result<(), String> {
        let mut problems = Vec::new();
        let deadline = Instant::now() + timeout;
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1))
        };
        let has_task = |c: &Ctr| {
            c.tasks()
                .map(|ts| ts.iter().any(|t| t.id == id))
                .unwrap_or(true)
        };
        if has_task(self) {
            let _ = self.run(
                &["tasks", "kill", "-s", "SIGKILL", id],
                "ctr tasks kill",
                left(),
            );
            // The task must reach STOPPED before it can be deleted.
            loop {
                match self.run(&["tasks", "delete", id], "ctr tasks delete", left()) {
                    Ok(t) if t.success() => break,
                    Ok(t) if t.stderr.contains("not found") => break,
                    Ok(t) if Instant::now() >= deadline => {
                        problems.push(format!("tasks delete {id}: {}", t.stderr.trim()));
                        break;
                    }
                    Err(e) => {
                        problems.push(e.to_string());
                        break;
                    }
                    Ok(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        }
        match self.run(
            &["containers", "delete", id],
            "ctr containers delete",
            left(),
        ) {
            Ok(t) if t.success() || t.stderr.contains("not found") => {}
            Ok(t) => problems.push(format!("containers delete {id}: {}", t.stderr.trim())),
            Err(e) => problems.push(e.to_string()),
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Removes every container in the namespace (before and after a measure).
    pub fn remove_all(&self, timeout: Duration) -> Result<(), String> {
        let ids = self
            .run(
                &["containers", "ls", "-q"],
                "ctr containers ls",
                HOUSEKEEPING_TIMEOUT,
            )
            .map_err(|e| e.to_string())?;
        let mut problems = Vec::new();
        for id in ids.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Err(e) = self.remove(id, timeout) {
                problems.push(e);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// The error text of a failed `ctr` step, for the report: the step, then ctr's own message
/// (which quotes the shim's error for a failed create).
pub fn step_error(what: &str, result: &Result<Timed, ExecError>) -> Option<String> {
    match result {
        Ok(t) if t.success() => None,
        Ok(t) => Some(
            ExecError::Failed {
                what: what.to_string(),
                status: t
                    .code
                    .map_or_else(|| "killed by a signal".into(), |c| c.to_string()),
                stdout: t.stdout.clone(),
                stderr: t.stderr.clone(),
            }
            .to_string(),
        ),
        Err(e) => Some(format!("{e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tasks_ls() {
        let text = "TASK          PID      STATUS    \nvb-runc-0     12345    RUNNING\nvb-x   0  STOPPED\nbroken line\n";
        assert_eq!(
            parse_tasks(text),
            vec![
                TaskRow {
                    id: "vb-runc-0".into(),
                    pid: 12345,
                    status: "RUNNING".into()
                },
                TaskRow {
                    id: "vb-x".into(),
                    pid: 0,
                    status: "STOPPED".into()
                },
            ]
        );
        assert!(parse_tasks("TASK PID STATUS\n").is_empty());
        assert!(parse_tasks("").is_empty());
    }

    #[test]
    fn step_errors_quote_ctr() {
        let failed = Ok(Timed {
            code: Some(1),
            stdout: String::new(),
            stderr:
                "ctr: failed to create shim task: vessel-vmm: unexpected argument '--shared-dir'\n"
                    .into(),
            elapsed: Duration::from_millis(5),
            first_stdout_byte: None,
        });
        let e = step_error("ctr run (vessel)", &failed).unwrap();
        assert!(
            e.starts_with("ctr run (vessel): exit status 1: ctr: failed to create shim task"),
            "{e}"
        );
        let ok = Ok(Timed {
            code: Some(0),
            stdout: String::new(),
            stderr: String::new(),
            elapsed: Duration::ZERO,
            first_stdout_byte: None,
        });
        assert_eq!(step_error("x", &ok), None);
    }
}

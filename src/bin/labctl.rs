//! `labctl`: the command-line client of labd.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use labd::client::Client;
use labd::config::{self, LabConfig};
use labd::protocol::RequestBody;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "Control a labd: submit jobs, follow logs, manage boards"
)]
struct Args {
    /// labd's socket (default: $LABD_SOCKET, then the config's, then /run/labd/labd.sock).
    #[arg(long, env = "LABD_SOCKET", global = true)]
    socket: Option<PathBuf>,
    /// A lab config to read the socket path from.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Junit,
}

#[derive(Subcommand)]
enum Cmd {
    /// Submit a job definition.
    Submit {
        file: PathBuf,
        /// Wait for the job to end; exit non-zero unless it is Complete.
        #[arg(long)]
        wait: bool,
        /// Follow the console log until the job ends (implies --wait).
        #[arg(long, short)]
        follow: bool,
    },
    /// Check a job definition offline (no daemon needed).
    Validate { file: PathBuf },
    /// List jobs, newest first.
    Jobs {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        board: Option<String>,
        #[arg(long)]
        device_type: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Show jobs older than this id (the last id of the previous page).
        #[arg(long)]
        cursor: Option<u64>,
    },
    /// Show one job with its events.
    Job { id: u64 },
    /// Print a job's console log.
    Logs {
        id: u64,
        #[arg(long, short)]
        follow: bool,
    },
    /// Print a job's test results.
    Results {
        id: u64,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Cancel a job.
    Cancel { id: u64 },
    /// List boards.
    Boards,
    /// A live view of the boards: state, health, job, phase and how long.
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Print one frame and exit (no screen clearing).
        #[arg(long)]
        once: bool,
    },
    /// Take a board offline (maintenance), retire it, or put it back online (a health check decides).
    Board {
        name: String,
        #[arg(value_parser = ["maintenance", "retired", "online"])]
        health: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Switch a board in maintenance on, off or reset it.
    Power {
        name: String,
        #[arg(value_parser = ["on", "off", "reset"])]
        action: String,
    },
    /// Print what a board's console showed while it was idle.
    ConsoleLog { name: String },
    /// Print labd's metrics in Prometheus text format.
    Metrics,
    /// Attach to a board's console: watch it and, as an admin on a board in
    /// maintenance, type on it. After a newline, `~.` leaves, `~p`
    /// power-cycles the board, `~~` sends one `~`.
    Console {
        name: String,
        /// Only watch; never type.
        #[arg(long)]
        read_only: bool,
    },
    /// Make labd re-read its config file and device types (admins only).
    Reload,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // Like any Unix filter, `labctl logs 7 | head` ends quietly when the
    // reader goes away, instead of panicking on a broken pipe.
    // SAFETY: restoring the default disposition of one signal before any
    // thread exists.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("labctl: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("labctl: {}", visible(&format!("{e:#}")));
            std::process::ExitCode::from(1)
        }
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn run(args: Args) -> anyhow::Result<u8> {
    if let Cmd::Validate { file } = &args.cmd {
        return validate(file, args.json);
    }
    let cfg = match &args.config {
        Some(p) => Some(LabConfig::load(p)?),
        None => None,
    };
    let socket = config::resolve_socket(args.socket.as_deref(), cfg.as_ref());
    let mut c = Client::connect(&socket).await?;
    let json = args.json;
    match args.cmd {
        Cmd::Validate { .. } => unreachable!("handled above"),
        Cmd::Submit { file, wait, follow } => {
            return submit(&mut c, json, &file, wait, follow).await;
        }
        Cmd::Jobs {
            state,
            board,
            device_type,
            limit,
            cursor,
        } => {
            let v = c
                .call(RequestBody::Jobs {
                    state,
                    board,
                    device_type,
                    limit: Some(limit),
                    cursor,
                })
                .await?;
            if json {
                print_json(&v);
            } else {
                print_jobs(&v);
            }
        }
        Cmd::Job { id } => {
            let v = c.call(RequestBody::Job { job: id }).await?;
            if json {
                print_json(&v);
            } else {
                print_job(id, &v);
            }
        }
        Cmd::Logs { id, follow } => {
            let mut out = std::io::stdout();
            c.stream(
                RequestBody::Logs {
                    job: id,
                    offset: 0,
                    follow,
                },
                |ev| {
                    if json {
                        println!("{ev}");
                    } else if let Some(d) = labd::protocol::bytes_from_json(ev) {
                        let _ = out.write_all(&d);
                        let _ = out.flush();
                    }
                },
            )
            .await?;
        }
        Cmd::Results { id, format } => {
            let v = c.call(RequestBody::Results { job: id }).await?;
            let format = if json { Format::Json } else { format };
            let results = v["results"].as_array().cloned().unwrap_or_default();
            match format {
                Format::Json => print_json(&v),
                Format::Table => {
                    println!(
                        "{:<24} {:<32} {:<8} MEASUREMENT",
                        "SUITE", "TEST CASE", "RESULT"
                    );
                    for r in &results {
                        let m = format!("{} {}", s(&r["measurement"]), s(&r["units"]));
                        println!(
                            "{:<24} {:<32} {:<8} {}",
                            s(&r["suite"]),
                            s(&r["name"]),
                            s(&r["result"]),
                            m.trim().trim_matches('-').trim()
                        );
                    }
                }
                Format::Junit => print!("{}", junit(id, &results)),
            }
        }
        Cmd::Cancel { id } => {
            c.call(RequestBody::Cancel { job: id }).await?;
            if !json {
                println!("job {id}: cancel requested");
            }
        }
        Cmd::Top { interval, once } => {
            return top(&mut c, interval, once).await;
        }
        Cmd::Boards => {
            let v = c.call(RequestBody::Boards).await?;
            if json {
                print_json(&v);
            } else {
                print_boards(&v);
            }
        }
        Cmd::Board {
            name,
            health,
            reason,
        } => {
            c.call(RequestBody::BoardHealth {
                board: name.clone(),
                health: health.clone(),
                reason,
            })
            .await?;
            if !json {
                println!("board {name}: {health}");
            }
        }
        Cmd::Power { name, action } => {
            c.call(RequestBody::Power {
                board: name.clone(),
                action: action.clone(),
            })
            .await?;
            if !json {
                println!("board {name}: power {action}");
            }
        }
        Cmd::Console { name, read_only } => {
            return console(c, &socket, &name, read_only).await;
        }
        Cmd::Reload => {
            let v = c.call(RequestBody::Reload).await?;
            if json {
                print_json(&v);
            } else {
                for change in v["changes"].as_array().into_iter().flatten() {
                    println!("{}", s(change));
                }
            }
        }
        Cmd::Metrics => {
            let v = c.call(RequestBody::Metrics).await?;
            if json {
                print_json(&v);
            } else {
                // Line by line: a label's value is anyone's text, shown not
                // obeyed, but the lines' ends are the format's own.
                for line in v["text"].as_str().unwrap_or_default().lines() {
                    println!("{}", visible(line));
                }
            }
        }
        Cmd::ConsoleLog { name } => {
            let v = c.call(RequestBody::ConsoleLog { board: name }).await?;
            if json {
                print_json(&v);
            } else {
                let d = labd::protocol::bytes_from_json(&v).unwrap_or_default();
                std::io::stdout().write_all(&d)?;
            }
        }
    }
    Ok(0)
}

/// One screen of `labctl top`.
fn render_top(boards: &Value, queued: usize, now: u64) -> String {
    let since = |v: &Value| {
        v.as_u64()
            .map(|t| {
                let secs = now.saturating_sub(t) / 1000;
                format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
            })
            .unwrap_or_else(|| "-".into())
    };
    let list = boards["boards"].as_array().cloned().unwrap_or_default();
    let busy = list.iter().filter(|b| !b["job"].is_null()).count();
    let (ow, jw) = (widest(&list, owner, 5), widest(&list, job_cell, 7));
    let mut out = format!(
        "labd top   boards: {} ({busy} busy)   queued jobs: {queued}\n\n{:<12} {:<ow$} {:<9} {:<12} {:<jw$} {:<19} {:>9} {:>9}\n",
        list.len(),
        "BOARD",
        "OWNER",
        "STATE",
        "HEALTH",
        "JOB",
        "PHASE",
        "IN PHASE",
        "JOB TIME"
    );
    for b in &list {
        let busy = !b["job"].is_null();
        out.push_str(&format!(
            "{:<12} {:<ow$} {:<9} {:<12} {:<jw$} {:<19} {:>9} {:>9}\n",
            s(&b["name"]),
            owner(b),
            s(&b["state"]),
            s(&b["health"]),
            job_cell(b),
            s(&b["phase"]),
            if busy {
                since(&b["phase_since"])
            } else {
                "-".into()
            },
            since(&b["job_since"]),
        ));
    }
    out
}

/// Who gives a board its jobs: `lava:<device>@<worker>` for a board a
/// lava-server owns (its device name there, this lab's worker name), else
/// `local`.
fn owner(b: &Value) -> String {
    match b.get("lava").filter(|l| !l.is_null()) {
        Some(l) => format!("lava:{}@{}", s(&l["device"]), s(&l["worker"])),
        None => "local".into(),
    }
}

/// A board's job: labd's id, and beside it the lava-server's for a
/// server's job (`12 (LAVA 345)`); `-` for none.
fn job_cell(b: &Value) -> String {
    match b.get("lava_job").filter(|l| !l.is_null()) {
        Some(l) => format!("{} (LAVA {})", s(&b["job"]), s(l)),
        None => s(&b["job"]),
    }
}

/// A value for a person to read: strings (job names, test case ids, error
/// messages: anyone's text) with their control characters shown, not
/// obeyed, by the terminal.
fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => visible(s),
        other => other.to_string(),
    }
}

/// `text` with every character that would steer a terminal instead of
/// being shown (C0 and C1 controls, DEL, and the bidirectional overrides
/// that reorder what is shown) written as an escape: `\x1b`, `\u{202e}`.
/// `--json` prints the exact text instead.
fn visible(text: &str) -> String {
    let steers = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(steers) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !steers(c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    out
}

/// `text` as an XML 1.0 attribute value: markup characters escaped,
/// whitespace a parser would normalise kept as character references, and
/// characters XML 1.0 cannot hold at all (most controls, lone surrogates'
/// stand-ins, U+FFFE/U+FFFF) replaced by U+FFFD.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..='\u{10ffff}' => {
                out.push(c)
            }
            _ => out.push('\u{fffd}'),
        }
    }
    out
}

/// A string field as sent (no terminal escaping: XML has its own).
fn raw(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn junit(id: u64, results: &[Value]) -> String {
    let fails = results.iter().filter(|r| r["result"] == "fail").count();
    let skips = results.iter().filter(|r| r["result"] == "skip").count();
    let mut out = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"labd job {id}\" tests=\"{}\" failures=\"{fails}\" skipped=\"{skips}\">\n", results.len());
    let mut suites: Vec<String> = results.iter().map(|r| raw(&r["suite"])).collect();
    suites.dedup();
    for suite in suites {
        out.push_str(&format!("  <testsuite name=\"{}\">\n", xml(&suite)));
        for r in results.iter().filter(|r| raw(&r["suite"]) == suite) {
            out.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\">",
                xml(&suite),
                xml(&raw(&r["name"]))
            ));
            match r["result"].as_str() {
                Some("fail") => out.push_str("<failure message=\"fail\"/>"),
                Some("skip") => out.push_str("<skipped/>"),
                _ => {}
            }
            out.push_str("</testcase>\n");
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// What the escape reader makes of typed bytes.
#[derive(Debug, PartialEq)]
enum Escape {
    Leave,
    PowerCycle,
}

/// `~` commands at the start of a line, as ssh and cu have them.
struct EscapeReader {
    line_start: bool,
    tilde: bool,
}

impl EscapeReader {
    fn new() -> Self {
        EscapeReader {
            line_start: true,
            tilde: false,
        }
    }

    /// The bytes to send, and a command if one was typed (what follows a
    /// command in the same read is dropped).
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Option<Escape>) {
        let mut out = Vec::new();
        for &b in input {
            if self.tilde {
                self.tilde = false;
                match b {
                    b'.' => return (out, Some(Escape::Leave)),
                    b'p' => return (out, Some(Escape::PowerCycle)),
                    b'~' => out.push(b'~'),
                    other => out.extend_from_slice(&[b'~', other]),
                }
            } else if self.line_start && b == b'~' {
                self.tilde = true;
                continue;
            } else {
                out.push(b);
            }
            self.line_start = b == b'\r' || b == b'\n';
        }
        (out, None)
    }
}

/// The terminal in raw mode for as long as this lives.
struct RawTerminal(nix::sys::termios::Termios);

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}

async fn console(
    mut watcher: Client,
    socket: &std::path::Path,
    board: &str,
    read_only: bool,
) -> anyhow::Result<u8> {
    use std::io::Read;
    let mut typer = if read_only {
        None
    } else {
        Some(Client::connect(socket).await?)
    };
    let _raw = if read_only {
        None
    } else {
        RawTerminal::enter()
    };

    let (in_tx, mut in_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    if !read_only {
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            loop {
                match std::io::stdin().read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if in_tx.send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    } else {
        // A watcher reads nothing; the stream ends the command.
        std::mem::forget(in_tx);
    }
    let name = board.to_owned();
    let mut watch = tokio::spawn(async move {
        let mut out = std::io::stdout();
        let mut attached = false;
        watcher
            .stream(RequestBody::ConsoleWatch { board: name.clone() }, |ev| {
                if !attached {
                    attached = true;
                    eprint!("[labctl: attached to the console of {name}; ~. leaves, ~p power-cycles]\r\n");
                }
                if let Some(d) = labd::protocol::bytes_from_json(ev) {
                    let _ = out.write_all(&d);
                    let _ = out.flush();
                }
            })
            .await
    });
    let mut esc = EscapeReader::new();
    loop {
        tokio::select! {
            r = &mut watch => {
                r??;
                return Ok(0);
            }
            input = in_rx.recv() => {
                let Some(bytes) = input else { return Ok(0) };
                let (send, cmd) = esc.feed(&bytes);
                if let Some(t) = &mut typer {
                    if !send.is_empty() {
                        t.call(labd::protocol::console_type(board, &send)).await?;
                    }
                    if cmd == Some(Escape::PowerCycle) {
                        t.call(RequestBody::Power { board: board.to_owned(), action: "reset".into() }).await?;
                        eprint!("\r\n[labctl: {board} power-cycled]\r\n");
                    }
                }
                if cmd == Some(Escape::Leave) {
                    eprint!("\r\n[labctl: left the console of {board}]\r\n");
                    return Ok(0);
                }
            }
        }
    }
}

/// `labctl validate`: parses a job file locally, as labd would.
fn validate(file: &std::path::Path, json: bool) -> anyhow::Result<u8> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    match labd::job::parse(&file.display().to_string(), &text) {
        Ok(p) => {
            for w in &p.warnings {
                eprintln!("warning: {}", visible(&w.to_string()));
            }
            if json {
                print_json(&serde_json::json!({"valid": true, "warnings": p.warnings}));
            } else {
                println!(
                    "{}: valid ({} actions)",
                    file.display(),
                    p.definition.actions.len()
                );
            }
            Ok(0)
        }
        Err(e) => {
            if json {
                print_json(&serde_json::json!({"valid": false, "errors": e.errors}));
            } else {
                for d in &e.errors {
                    eprintln!("error: {}", visible(&d.to_string()));
                }
            }
            Ok(1)
        }
    }
}

/// The `labctl jobs` table.
fn print_jobs(v: &Value) {
    let jobs: Vec<&Value> = v["jobs"].as_array().into_iter().flatten().collect();
    // Columns as wide as their longest value, so long board and
    // device-type names stay aligned.
    let width = |key: &str, min: usize| {
        jobs.iter()
            .map(|j| s(&j[key]).len())
            .max()
            .unwrap_or(0)
            .max(min)
    };
    let (bw, dw) = (width("board", 10), width("device_type", 18));
    println!(
        "{:>6} {:<10} {:<11} {:<bw$} {:<dw$} {:>4}  NAME",
        "ID", "STATE", "HEALTH", "BOARD", "DEVICE TYPE", "PRIO"
    );
    for j in jobs {
        // A lava-server's job says its id there, as `boards` does.
        let lava = j["lava_job"]
            .as_u64()
            .map_or_else(String::new, |l| format!(" (LAVA {l})"));
        println!(
            "{:>6} {:<10} {:<11} {:<bw$} {:<dw$} {:>4}  {}{lava}",
            j["id"].to_string(),
            s(&j["state"]),
            s(&j["health"]),
            s(&j["board"]),
            s(&j["device_type"]),
            j["priority"].to_string(),
            s(&j["name"])
        );
    }
}

/// `labctl job`: a job, its time on the board by phase, and its events.
fn print_job(id: u64, v: &Value) {
    println!("job {id}: {}", s(&v["name"]));
    for k in [
        "state",
        "health",
        "error_class",
        "error",
        "board",
        "device_type",
        "priority",
        "submitter",
    ] {
        println!("  {k:<12} {}", s(&v[k]));
    }
    if let Some(l) = v["lava_job"].as_u64() {
        println!("  {:<12} {l}", "lava job");
    }
    if let (Some(sub), Some(start)) = (v["submit_time"].as_u64(), v["start_time"].as_u64()) {
        println!(
            "  {:<12} {:.3}s",
            "queued",
            start.saturating_sub(sub) as f64 / 1000.0
        );
    }
    let timing = v["timing"].as_array().cloned().unwrap_or_default();
    if !timing.is_empty() {
        let total: u64 = timing.iter().filter_map(|p| p["ms"].as_u64()).sum();
        println!("  time on the board, by phase:");
        for p in &timing {
            let ms = p["ms"].as_u64().unwrap_or(0);
            println!(
                "  {:>9.3}s {:>5.1}%  {}",
                ms as f64 / 1000.0,
                100.0 * ms as f64 / total.max(1) as f64,
                s(&p["phase"])
            );
        }
    }
    println!("  events:");
    let t0 = v["submit_time"].as_u64().unwrap_or(0);
    for e in v["events"].as_array().into_iter().flatten() {
        let t = e["time"].as_u64().unwrap_or(0).saturating_sub(t0);
        println!(
            "  {:>9.3}s {:<20} {}",
            t as f64 / 1000.0,
            s(&e["kind"]),
            s(&e["message"])
        );
    }
}

/// The width of a column of `cell`s of `rows`: its longest, at least `min`.
fn widest<'a>(
    rows: impl IntoIterator<Item = &'a Value>,
    cell: impl Fn(&Value) -> String,
    min: usize,
) -> usize {
    rows.into_iter()
        .map(|r| cell(r).len())
        .max()
        .unwrap_or(0)
        .max(min)
}

/// The `labctl boards` table.
fn print_boards(v: &Value) {
    let boards: Vec<&Value> = v["boards"].as_array().into_iter().flatten().collect();
    let width = |key: &str, min: usize| {
        boards
            .iter()
            .map(|b| s(&b[key]).len())
            .max()
            .unwrap_or(0)
            .max(min)
    };
    let (nw, dw) = (width("name", 12), width("device_type", 20));
    let (ow, jw) = (
        widest(boards.iter().copied(), owner, 5),
        widest(boards.iter().copied(), job_cell, 7),
    );
    println!(
        "{:<nw$} {:<dw$} {:<ow$} {:<9} {:<12} {:<8} {:<jw$} {:<19} TAGS",
        "NAME", "DEVICE TYPE", "OWNER", "STATE", "HEALTH", "POWER", "JOB", "PHASE"
    );
    for b in boards {
        let tags: Vec<&str> = b["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "{:<nw$} {:<dw$} {:<ow$} {:<9} {:<12} {:<8} {:<jw$} {:<19} {}",
            s(&b["name"]),
            s(&b["device_type"]),
            owner(b),
            s(&b["state"]),
            s(&b["health"]),
            s(&b["power"]),
            job_cell(b),
            s(&b["phase"]),
            tags.join(",")
        );
    }
}

/// `labctl submit`: submits a job file; with `--wait` or `--follow`, waits
/// for its end (printing its console with `--follow`) and exits 1 unless it
/// is Complete.
async fn submit(
    c: &mut Client,
    json: bool,
    file: &std::path::Path,
    wait: bool,
    follow: bool,
) -> anyhow::Result<u8> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let v = c
        .call(RequestBody::Submit {
            definition: text,
            file: Some(file.display().to_string()),
        })
        .await?;
    for w in v["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", visible(w.as_str().unwrap_or("")));
    }
    let id = v["job"].as_u64().context("no job id in answer")?;
    if json && !(wait || follow) {
        print_json(&v);
    } else {
        println!("{id}");
    }
    if wait || follow {
        let mut out = std::io::stdout();
        let end = c
            .logs(id, true, |d| {
                if follow {
                    let _ = out.write_all(d);
                    let _ = out.flush();
                }
            })
            .await?;
        let j = c.call(RequestBody::Job { job: id }).await?;
        eprintln!(
            "job {id}: {} {}{}",
            end["state"].as_str().unwrap_or(""),
            end["health"].as_str().unwrap_or(""),
            j["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        return Ok(if end["health"] == "Complete" { 0 } else { 1 });
    }
    Ok(0)
}

/// `labctl top`: the boards and the queue, redrawn every `interval` seconds.
async fn top(c: &mut Client, interval: f64, once: bool) -> anyhow::Result<u8> {
    let every = std::time::Duration::from_secs_f64(interval.max(0.1));
    loop {
        // One request a frame: the boards answer says how many
        // jobs are queued, however long the queue.
        let boards = c.call(RequestBody::Boards).await?;
        let queued = boards["queued"].as_u64().unwrap_or(0) as usize;
        let frame = render_top(&boards, queued, labd::model::now_ms());
        if once {
            print!("{frame}");
            break;
        }
        // Home, clear, then the frame: one write, no flicker.
        print!("\x1b[H\x1b[2J{frame}");
        std::io::stdout().flush()?;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A board a lava-server owns shows its device and worker, and its
    /// job labd's id with the server's beside it; a lab's own board shows
    /// `local` and labd's id alone.
    #[test]
    fn top_shows_the_owner_and_a_lava_job_s_id() {
        let boards = serde_json::json!({"boards": [
            {"name": "qemu-01", "state": "Running", "health": "Good", "job": 12,
             "phase": "Testing", "phase_since": 0, "job_since": 0,
             "lava": {"device": "qemu-01", "url": "http://lava/", "worker": "lab-1"},
             "lava_job": 345},
            {"name": "sim-01", "state": "Running", "health": "Good", "job": 13,
             "phase": "Kernel", "phase_since": 0, "job_since": 0},
            {"name": "sim-02", "state": "Idle", "health": "Good", "job": null,
             "phase": "Off", "phase_since": 0, "job_since": null},
        ]});
        let frame = render_top(&boards, 0, 1000);
        let line = |name: &str| {
            frame
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in\n{frame}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(frame.contains(" OWNER "), "{frame}");
        assert_eq!(
            line("qemu-01"),
            "qemu-01 lava:qemu-01@lab-1 Running Good 12 (LAVA 345) Testing 0:00:01 0:00:01"
        );
        assert_eq!(
            line("sim-01"),
            "sim-01 local Running Good 13 Kernel 0:00:01 0:00:01"
        );
        assert_eq!(line("sim-02"), "sim-02 local Idle Good - Off - -");
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(visible("plain name"), "plain name");
        assert_eq!(
            visible("a\x1b[2Jb\r\n\x07\0\u{7f}\u{9b}c"),
            "a\\x1b[2Jb\\x0d\\x0a\\x07\\x00\\x7f\\x9bc"
        );
        assert_eq!(visible("abc\u{202e}fed"), "abc\\u{202e}fed");
    }

    #[test]
    fn xml_attributes_hold_any_text() {
        assert_eq!(
            xml("<a&b\"c'\td\ne\u{1b}\u{fffe}é"),
            "&lt;a&amp;b&quot;c&apos;&#9;d&#10;e\u{fffd}\u{fffd}é"
        );
    }

    #[test]
    fn tilde_commands_only_at_the_start_of_a_line() {
        let mut e = EscapeReader::new();
        assert_eq!(e.feed(b"ls ~/x\r"), (b"ls ~/x\r".to_vec(), None));
        assert_eq!(e.feed(b"~~ok"), (b"~ok".to_vec(), None));
        assert_eq!(e.feed(b"\n~p"), (b"\n".to_vec(), Some(Escape::PowerCycle)));
        let mut e = EscapeReader::new();
        assert_eq!(e.feed(b"~"), (vec![], None));
        assert_eq!(e.feed(b"."), (vec![], Some(Escape::Leave)));
    }
}

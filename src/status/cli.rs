//! `sluice status -c sluice.toml REQUEST_ID [--events] [--watch] [--json]`: what became of a
//! request, read from the store the config names — MongoDB, or the SQLite state file (opened
//! read-only, so it works while a `sluice run` writes the file).
//!
//! Without flags: a summary (state, the record that owns the id, chunks, counts, expiry,
//! terminal event). `--events`: the events so far, as JSON lines, exactly as the results topic
//! carries them. `--watch`: those, then each new one until the terminal event (waiting for an
//! id not claimed yet).

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use sluice_config::Config;
use sluice_pipeline::dedupe::unix_now_ms;
use sluice_pipeline::status::{self, valid_request_id, RequestStatus, State, StatusReader};

/// What `sluice status` was asked.
pub struct Ask {
    /// The request.
    pub request_id: String,
    /// Print the events so far.
    pub events: bool,
    /// Follow the events until the terminal one.
    pub watch: bool,
    /// The status as JSON (the API's answer) instead of the summary.
    pub json: bool,
}

/// Runs `sluice status`.
pub async fn run(config: &Config, ask: Ask) -> anyhow::Result<()> {
    anyhow::ensure!(
        valid_request_id(&ask.request_id),
        "{:?} is not a request_id (1-128 characters of [A-Za-z0-9._:-])",
        ask.request_id
    );
    let reader = super::open_reader(config, false).await?;
    let reader = reader.as_ref();
    if ask.watch {
        return watch(reader, &ask.request_id, config).await;
    }
    if ask.events {
        let mut next = 0;
        loop {
            let page = status::EVENTS_PAGE;
            let (claim, list) = status::events(reader, &ask.request_id, next, page).await?;
            if claim.is_none() {
                eprintln!("{}: unknown — {}", ask.request_id, status::UNKNOWN_NOTE);
            }
            let mut out = std::io::stdout().lock();
            for e in &list {
                writeln!(out, "{}", e.text)?;
            }
            match list.last() {
                Some(last) if list.len() == page && !last.terminal => next = last.position + 1,
                _ => return Ok(()),
            }
        }
    }
    let s = super::status_of(reader, &ask.request_id, config.execute.default_deadline_ms).await?;
    if ask.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", summary(&s));
    }
    Ok(())
}

/// Prints the events as they come, until the terminal one.
async fn watch(reader: &dyn StatusReader, id: &str, config: &Config) -> anyhow::Result<()> {
    let poll = Duration::from_millis(config.status.poll_interval_ms);
    let (mut next, mut generation, mut waiting) = (0, None, false);
    loop {
        let (claim, list) = status::events(reader, id, next, status::EVENTS_PAGE).await?;
        match (&claim, generation) {
            (None, None) if !waiting => {
                eprintln!("{id}: unknown — not claimed yet; waiting for it");
                waiting = true;
            }
            (None, Some(_)) => anyhow::bail!("{id}: its claim is gone (forgotten)"),
            (Some(c), Some(g)) if c.claimed_at_ms != g => {
                anyhow::bail!("{id}: claimed anew by another record; stopping")
            }
            (Some(c), _) => generation = Some(c.claimed_at_ms),
            _ => {}
        }
        let mut out = std::io::stdout().lock();
        for e in list {
            writeln!(out, "{}", e.text)?;
            next = e.position + 1;
            if e.terminal {
                return Ok(());
            }
        }
        out.flush()?;
        drop(out);
        tokio::time::sleep(poll).await;
    }
}

/// "12 s ago" / "in 3 min".
fn relative(ms: i64) -> String {
    let d = ms - unix_now_ms();
    let a = d.unsigned_abs() / 1000;
    let text = match a {
        0..=119 => format!("{a} s"),
        120..=7199 => format!("{} min", a / 60),
        7200..=172_799 => format!("{} h", a / 3600),
        _ => format!("{} days", a / 86_400),
    };
    if d < 0 {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

/// The human summary of a status.
fn summary(s: &RequestStatus) -> String {
    let mut out = format!("request_id  {}\n", s.request_id);
    let state = serde_json::to_value(s.state).unwrap_or_default();
    out += &format!("state       {}\n", state.as_str().unwrap_or("?"));
    if let Some(note) = &s.note {
        out += &format!("note        {note}\n");
    }
    if let (Some(c), Some(op)) = (&s.collection, &s.op) {
        out += &format!("request     {op} on {c}, {} items\n", s.items.unwrap_or(0));
    }
    if let Some(src) = &s.source {
        out += &format!(
            "owner       {} partition {} offset {} (the record that claimed this id; any other \
             record with the same id is its duplicate)\n",
            src.topic, src.partition, src.offset
        );
    }
    if let Some(at) = s.claimed_at_ms {
        out += &format!("claimed     {at} (unix ms, {})\n", relative(at));
    }
    if let Some(c) = s.chunks {
        out += &format!("chunks      {} of {} done\n", c.done, c.planned);
    }
    if let Some(c) = &s.counts {
        out += &format!(
            "items       {} ok, {} failed, {} skipped, {} duplicate, {} not found, {} not attempted (of {} so far)\n",
            c.ok, c.failed, c.skipped, c.duplicate, c.not_found, c.not_attempted, c.total
        );
    }
    if let Some(d) = s.deadline_ms {
        out += &format!("deadline    {d} (unix ms, {})\n", relative(d));
    }
    match (s.state, s.expires_at) {
        (State::Unknown, _) => {}
        (_, Some(e)) => out += &format!("forgotten   {e} (unix s, {})\n", relative(e * 1000)),
        (_, None) => out += "forgotten   never while unfinished\n",
    }
    if let Some(t) = &s.terminal {
        out += &format!("terminal    {}\n", t.get());
    }
    out
}

/// Loads the config for `sluice status`, with `--state` overriding `embedded.state`.
pub fn config(
    file: Option<&std::path::Path>,
    state: Option<std::path::PathBuf>,
) -> anyhow::Result<Config> {
    let mut config = sluice_config::load(file).context("loading the config")?;
    if let Some(s) = state {
        config.embedded.state = s;
    }
    Ok(config)
}

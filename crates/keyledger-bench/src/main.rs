//! # keyledger-bench
//!
//! The load generator and baseline runner of keyledger. Every figure is measured next to a
//! ceiling measured in the same run on the same machine, and the run ends with one table
//! (figure, baseline, ratio, target, met?):
//!
//! - HTTP (the real server, started in-process on loopback, N keep-alive connections):
//!   `/healthz` is the ceiling of the bare HTTP stack for `POST /v1/verify`; a raw
//!   `write 4 KiB + fdatasync` loop on the data dir's disk is the ceiling of one commit for
//!   durable creates (`POST /v1/keys`), with many connections and with one.
//! - Replay: `persisted::catch_up(rebuild)` against a raw redb scan of the replay rows (what it reads).
//! - Start-up (`Service::open` in a child process, with its RSS), memory per key, listing.
//!
//! Data sets of N keys (about 3N events) are generated once through `Log::append_batch` and
//! cached ([`dataset`]); each run works on a copy.

mod dataset;
mod http;
mod nats;
mod report;
mod stats;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use keyledger_core::SecretHash;
use keyledger_projections::{ListQuery, ReadModel, fold_log, persisted};
use keyledger_service::{Actor, Config, Service, VerifyCode, open_log};
use report::{Met, Table, bytes, rate, ratio, secs, thousands};
use stats::{Counting, Latency, rss};
use std::collections::HashMap;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn default_client_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// `Service::open` on the data set, in a child process, with its RSS.
    Startup,
    /// In-process: listing, verify, heap bytes per key.
    Model,
    /// `catch_up` rebuild and in-memory fold against a raw scan.
    Replay,
    /// The raw fsync loop.
    Fsync,
    /// The real server over loopback: healthz, verify, creates.
    Http,
    /// A real nats-server: publish rate against raw JetStream publishes, commit→ack lag.
    Nats,
}

/// Load generator and baseline runner for keyledger: prints one table of figures next to their
/// baselines from the same run.
#[derive(Debug, Parser)]
#[command(name = "keyledger-bench")]
struct Args {
    /// Keys in the data set (`1k`, `100k`, `1M` or a number).
    #[arg(long, value_parser = parse_count, default_value = "100k")]
    keys: u64,
    /// Seconds each HTTP load scenario is measured (after a warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Concurrent keep-alive connections for the HTTP scenarios.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Small sizes and short runs: 1k keys, 1 s per HTTP scenario.
    #[arg(long)]
    quick: bool,
    /// Worker threads of the load generator's runtime (it shares the cores with the server);
    /// default: one per core. With fewer, the client itself becomes the bottleneck: `/healthz`
    /// is capped by it, and each time the lone client thread is descheduled its connections'
    /// latencies grow by a scheduler slice (p99 ~4 ms instead of ~1 ms on 2 cores).
    #[arg(long, default_value_t = default_client_threads())]
    client_threads: usize,
    /// Worker threads of the server's runtime, as `serve --worker-threads`; default: one per
    /// core, as `serve` has.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    server_worker_threads: Option<u16>,
    /// Where each run's copy of the data set (and the fsync probe file) goes; its disk is the
    /// one measured. Default: the system temp dir.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Where generated data sets are cached between runs. Default: `<work dir>/keyledger-bench-cache`.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Run only these scenarios (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Internal: measure `Service::open` on this data dir and print the result.
    #[arg(long, hide = true)]
    probe_startup: Option<PathBuf>,
}

fn parse_count(s: &str) -> Result<u64, String> {
    let s = s.trim().replace('_', "");
    let (digits, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1_000),
        Some('m' | 'M') => (&s[..s.len() - 1], 1_000_000),
        _ => (s.as_str(), 1),
    };
    digits
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| format!("not a count: {e}"))
}

/// Everything measured; `None` where a scenario did not run.
#[derive(Default)]
struct Results {
    startup: Option<Startup>,
    verify_inproc: Option<(f64, f64)>,
    index_bytes_per_key: Option<f64>,
    model_bytes_per_key: Option<f64>,
    list_search: Option<(Latency, Latency)>,
    list_plain: Option<Latency>,
    raw_scan: Option<(f64, u64)>,
    catch_up: Option<f64>,
    fold: Option<f64>,
    fsync: Option<(f64, Latency)>,
    healthz: Option<http::Outcome>,
    verify_http: Option<http::Outcome>,
    creates: Option<http::Outcome>,
    lone_create: Option<http::Outcome>,
    /// Mean commands per commit and mean commit time during the many-connection creates.
    create_batches: Option<(f64, f64)>,
    nats: Option<nats::Outcome>,
}

struct Startup {
    secs: f64,
    rss_before: u64,
    rss_after: u64,
    keys: u64,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if let Some(dir) = &args.probe_startup {
        return probe_startup(dir);
    }
    if args.quick {
        args.keys = args.keys.min(1_000);
        args.duration = args.duration.min(1.0);
    }
    let all = args.only.is_empty();
    let runs = |s: Scenario| all || args.only.contains(&s);
    let work_root = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let cache_root = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| work_root.join("keyledger-bench-cache"));
    let data = dataset::Dataset::prepare(&cache_root, &work_root, args.keys)?;
    eprintln!(
        "data set: {} keys, {} events, working copy in {}",
        thousands(data.keys),
        thousands(data.events),
        data.dir.display()
    );
    if let Some(s) = data.generated_in {
        eprintln!(
            "  bulk generation: {} events/s through Log::append_batch",
            thousands((data.events as f64 / s) as u64)
        );
    }
    let load_before = loadavg();
    let mut r = Results::default();
    if runs(Scenario::Startup) {
        eprintln!("start-up ...");
        r.startup = Some(run_startup_probe(&data.dir)?);
    }
    if runs(Scenario::Model) {
        eprintln!("in-process model: verify, memory, listing ...");
        model_scenarios(&data, &args, &mut r)?;
    }
    if runs(Scenario::Replay) {
        eprintln!("replay ...");
        replay(&data.dir, &mut r)?;
    }
    if runs(Scenario::Fsync) {
        eprintln!("fsync loop ...");
        r.fsync = Some(fsync_loop(&data.dir, args.duration.min(3.0))?);
    }
    if runs(Scenario::Http) {
        http_scenarios(&data, &args, &mut r)?;
    }
    if runs(Scenario::Nats) {
        let duration = Duration::from_secs_f64(args.duration);
        match nats::run(&data.dir, &work_root, duration) {
            Ok(n) => r.nats = Some(n),
            // Without nats-server the rest of the table still stands.
            Err(e) if !args.only.contains(&Scenario::Nats) => {
                eprintln!("NATS scenarios skipped: {e:#}")
            }
            Err(e) => return Err(e),
        }
    }
    print_details(&r);
    let table = table(&data, &args, &r);
    println!();
    println!(
        "keyledger-bench: {} keys, {} events, {} connections, {} client threads, {} server \
         worker threads, {} s per HTTP scenario, {} cores",
        thousands(data.keys),
        thousands(data.events),
        args.connections,
        args.client_threads,
        args.server_worker_threads
            .map_or_else(|| "default".to_owned(), |n| n.to_string()),
        args.duration,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "load average (1 min) before the run: {load_before}, after: {}; anything else running on \
         the cores skews every figure",
        loadavg()
    );
    println!();
    print!("{}", table.render());
    Ok(())
}

/// The 1-minute load average, from `/proc/loadavg`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Child process: open the service on `dir`, print `secs rss_before rss_after keys`.
fn probe_startup(dir: &Path) -> anyhow::Result<()> {
    let before = rss();
    let t = Instant::now();
    let service = Service::open(Config::new(dir))?;
    let secs = t.elapsed().as_secs_f64();
    let after = rss();
    let keys = service.key_count();
    service.shutdown();
    println!("{secs} {before} {after} {keys}");
    Ok(())
}

fn run_startup_probe(dir: &Path) -> anyhow::Result<Startup> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("--probe-startup")
        .arg(dir)
        .output()
        .context("running the start-up probe")?;
    anyhow::ensure!(
        out.status.success(),
        "start-up probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let f: Vec<&str> = text.split_whitespace().collect();
    anyhow::ensure!(f.len() == 4, "unexpected probe output {text:?}");
    Ok(Startup {
        secs: f[0].parse()?,
        rss_before: f[1].parse()?,
        rss_after: f[2].parse()?,
        keys: f[3].parse()?,
    })
}

/// Indices of up to `n` keys spread over the data set, the admin and verifier keys excluded.
fn sample(keys: u64, n: u64) -> Vec<u64> {
    let pool = keys.saturating_sub(2).max(1);
    let n = n.min(pool);
    (0..n).map(|j| 2 + j * pool / n).collect()
}

fn model_scenarios(data: &dataset::Dataset, args: &Args, r: &mut Results) -> anyhow::Result<()> {
    // The in-process verify's baseline: a plain hash map from secret hash to key id.
    let index: HashMap<SecretHash, uuid::Uuid> = (0..data.keys)
        .map(|i| (dataset::current_secret(i).hash(), uuid::Uuid::nil()))
        .collect();

    let service = Service::open(Config::new(&data.dir))?;
    let states = service.snapshot();
    let (model, model_bytes) = Counting::measure(|| {
        let mut m = ReadModel::default();
        for s in &states {
            m.load(s.clone(), None);
        }
        m
    });
    r.model_bytes_per_key = Some(model_bytes as f64 / data.keys as f64);
    r.index_bytes_per_key = Some(model.index_bytes() as f64 / data.keys as f64);
    drop(model);

    // In-process verify against SHA-256 + hash-map lookup alone, over the same keys.
    let presented: Vec<String> = sample(data.keys, 4096)
        .into_iter()
        .map(|i| dataset::current_secret(i).expose().to_owned())
        .collect();
    let now = keyledger_service::now();
    let per_op = |f: &mut dyn FnMut(&str) -> bool| {
        let rounds = (2_000_000 / presented.len()).max(1);
        for s in &presented {
            assert!(f(s), "every sampled key verifies");
        }
        let t = Instant::now();
        for _ in 0..rounds {
            for s in &presented {
                black_box(f(black_box(s)));
            }
        }
        t.elapsed().as_secs_f64() / (rounds * presented.len()) as f64
    };
    let verify = per_op(&mut |s| service.verify(s, &[], None, now).code == VerifyCode::Valid);
    let baseline = per_op(&mut |s| index.contains_key(&SecretHash::of(s)));
    r.verify_inproc = Some((verify, baseline));
    drop(index);

    // Listing: a page of 50 with a search, against a raw substring scan of the same names.
    let names: Vec<String> = states.iter().map(|s| s.name.to_lowercase()).collect();
    drop(states);
    let budget = Duration::from_secs_f64(args.duration.max(1.0));
    let timed = |f: &mut dyn FnMut()| {
        let mut lat = Latency::new();
        let t = Instant::now();
        while lat.len() < 20 || (lat.len() < 1000 && t.elapsed() < budget) {
            let t0 = Instant::now();
            f();
            lat.record(t0.elapsed());
        }
        lat
    };
    let search = ListQuery {
        limit: 50,
        search: Some(dataset::SEARCH.into()),
        ..ListQuery::default()
    };
    let list = timed(&mut || {
        let page = service.list(&Actor::Cli, search.clone()).expect("list");
        assert_eq!(page.items.len(), 50.min(page.total));
        black_box(page);
    });
    // A needle only known at run time, as the service's is (a constant one is folded).
    let needle = black_box(dataset::SEARCH.to_owned());
    let scan = timed(&mut || {
        black_box(names.iter().filter(|n| n.contains(needle.as_str())).count());
    });
    r.list_search = Some((list, scan));
    let plain = ListQuery {
        limit: 50,
        ..ListQuery::default()
    };
    r.list_plain = Some(timed(&mut || {
        black_box(service.list(&Actor::Cli, plain.clone()).expect("list"));
    }));
    service.shutdown();
    Ok(())
}

fn replay(dir: &Path, r: &mut Results) -> anyhow::Result<()> {
    let log = open_log(&Config::new(dir))?;
    let t = Instant::now();
    let (mut n, mut b) = (0u64, 0u64);
    // The ceiling is a scan of what a replay reads: the replay rows, not the JSON.
    log.scan_replay_rows_raw(0, |_, bytes| {
        n += 1;
        b += bytes.len() as u64;
        Ok(true)
    })?;
    black_box(b);
    r.raw_scan = Some((n as f64 / t.elapsed().as_secs_f64(), n));
    let t = Instant::now();
    let applied = persisted::catch_up(&log, true, |_, _| {})?;
    anyhow::ensure!(applied == n, "catch_up applied {applied} of {n} events");
    r.catch_up = Some(n as f64 / t.elapsed().as_secs_f64());
    let t = Instant::now();
    let model = fold_log(&log)?;
    r.fold = Some(n as f64 / t.elapsed().as_secs_f64());
    drop(model);
    Ok(())
}

/// `write 4 KiB at offset 0 + fdatasync` in a loop on `dir`'s disk: the rate of single-fsync
/// commits, with the latency of each.
fn fsync_loop(dir: &Path, seconds: f64) -> anyhow::Result<(f64, Latency)> {
    let path = dir.join("fsync-probe");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let block = [0xa5_u8; 4096];
    file.write_all_at(&block, 0)?;
    file.sync_all()?;
    let mut lat = Latency::new();
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < seconds.max(0.5) {
        let t0 = Instant::now();
        file.write_all_at(&block, 0)?;
        file.sync_data()?;
        lat.record(t0.elapsed());
    }
    let rate = lat.len() as f64 / t.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok((rate, lat))
}

fn http_scenarios(data: &dataset::Dataset, args: &Args, r: &mut Results) -> anyhow::Result<()> {
    let server_rt = keyledger::runtime_builder(args.server_worker_threads)
        .thread_name("server")
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .thread_name("loadgen")
        .build()?;
    let server = server_rt.block_on(keyledger::start(keyledger::ServeOptions::new(&data.dir)))?;
    let addr = server.addr;
    let warmup = Duration::from_secs_f64((args.duration / 5.0).clamp(0.2, 1.0));
    let load = |requests: Vec<Vec<u8>>, status, expect, connections| http::Load {
        requests: Arc::new(requests),
        status,
        expect,
        connections,
        warmup,
        duration: Duration::from_secs_f64(args.duration),
    };
    let admin = dataset::current_secret(dataset::ADMIN);
    let verifier = dataset::current_secret(dataset::VERIFIER);
    let run = |name: &str, l: http::Load| -> anyhow::Result<http::Outcome> {
        eprintln!("HTTP {name} ({} connections) ...", l.connections);
        let out = client_rt.block_on(http::run(addr, l))?;
        eprintln!(
            "  {}/s, p99 {}, {:.1} µs CPU per request",
            thousands(out.rate().round() as u64),
            secs(out.latency.quantile(0.99)),
            out.cpu.total / out.completed.max(1) as f64 * 1e6
        );
        if out.errors > 0 {
            eprintln!("  {name}: {} failed responses", out.errors);
        }
        Ok(out)
    };

    let healthz = vec![http::request("GET", "/healthz", None, None)];
    let verify: Vec<Vec<u8>> = sample(data.keys, 1024)
        .into_iter()
        .map(|i| {
            let body = serde_json::json!({ "key": dataset::current_secret(i).expose() });
            http::request(
                "POST",
                "/v1/verify",
                Some(verifier.expose()),
                Some(&body.to_string()),
            )
        })
        .collect();
    // Verify and its baseline in alternating slices of ~1 s (healthz, verify, verify, healthz,
    // ...), each slice after its own warm-up: this machine's speed drifts over seconds, and
    // both should see the same drift. The figures are the slices' sums.
    let slices = (args.duration.round() as usize).max(1);
    let slice = Duration::from_secs_f64(args.duration / slices as f64);
    let slice_warmup = (slice / 5).clamp(Duration::from_millis(200), Duration::from_secs(1));
    let (mut healthz_out, mut verify_out) = (None::<http::Outcome>, None::<http::Outcome>);
    for i in 0..slices {
        let order = if i % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for is_verify in order {
            let (requests, expect, name, out): (_, &'static [u8], _, _) = if is_verify {
                (&verify, b"\"valid\":true", "verify", &mut verify_out)
            } else {
                (&healthz, b"ok", "healthz", &mut healthz_out)
            };
            let mut l = load(requests.clone(), 200, Some(expect), args.connections);
            l.duration = slice;
            l.warmup = slice_warmup;
            let o = run(&format!("{name}, slice {}/{slices}", i + 1), l)?;
            match out {
                Some(total) => total.merge(&o),
                None => *out = Some(o),
            }
        }
    }
    r.healthz = healthz_out;
    r.verify_http = verify_out;

    let create = http::request(
        "POST",
        "/v1/keys",
        Some(admin.expose()),
        Some(r#"{"name":"bench create","scopes":["keys:read"]}"#),
    );
    let before = client_rt.block_on(batch_totals(addr))?;
    r.creates = Some(run(
        "create",
        load(vec![create.clone()], 201, None, args.connections),
    )?);
    let after = client_rt.block_on(batch_totals(addr))?;
    let batches = after.count - before.count;
    if batches > 0.0 {
        r.create_batches = Some((
            (after.commands - before.commands) / batches,
            (after.seconds - before.seconds) / batches,
        ));
    }
    r.lone_create = Some(run("create, lone", load(vec![create], 201, None, 1))?);
    server_rt.block_on(server.shutdown());
    Ok(())
}

/// The writer's commit-batch totals, read from the server's `/metrics`.
#[derive(Default)]
struct BatchTotals {
    count: f64,
    commands: f64,
    seconds: f64,
}

async fn batch_totals(addr: std::net::SocketAddr) -> anyhow::Result<BatchTotals> {
    let (status, body) = http::get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "GET /metrics answered {status}");
    let mut t = BatchTotals::default();
    for line in String::from_utf8_lossy(&body).lines() {
        let Some((name, value)) = line.split_once(' ') else {
            continue;
        };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        match name {
            "keyledger_commit_batch_commands_count" => t.count = value,
            "keyledger_commit_batch_commands_sum" => t.commands = value,
            "keyledger_commit_batch_duration_seconds_sum" => t.seconds = value,
            _ => {}
        }
    }
    Ok(t)
}

fn print_details(r: &Results) {
    let mut rows: Vec<(String, String, &Latency)> = Vec::new();
    // Per HTTP scenario: CPU per request, all threads and the writer thread.
    let mut cpu_rows: Vec<(&str, f64, f64)> = Vec::new();
    for (name, o) in [
        ("GET /healthz", &r.healthz),
        ("POST /v1/verify", &r.verify_http),
        ("POST /v1/keys", &r.creates),
        ("POST /v1/keys, 1 connection", &r.lone_create),
    ] {
        if let Some(o) = o {
            rows.push((name.into(), rate(o.rate()), &o.latency));
            let n = o.completed.max(1) as f64;
            cpu_rows.push((name, o.cpu.total / n, o.cpu.writer / n));
        }
    }
    if let Some(n) = &r.nats {
        rows.push((
            format!("commit→ack lag, {}/s", thousands(nats::LAG_RATE)),
            rate(n.lag_rate),
            &n.lag,
        ));
    }
    if let Some((rate_, lat)) = &r.fsync {
        rows.push(("write 4 KiB + fdatasync".into(), rate(*rate_), lat));
    }
    if let Some((list, scan)) = &r.list_search {
        rows.push(("list 50, search".into(), "-".into(), list));
        rows.push(("raw name scan".into(), "-".into(), scan));
    }
    if let Some(plain) = &r.list_plain {
        rows.push(("list 50, no filter".into(), "-".into(), plain));
    }
    if rows.is_empty() {
        return;
    }
    println!();
    println!("| scenario | throughput | mean | p50 | p99 | p999 | max-ish (p99.99) |");
    println!("|---|---|---|---|---|---|---|");
    for (name, rate_, lat) in rows {
        println!(
            "| {name} | {rate_} | {} | {} | {} | {} | {} |",
            secs(lat.mean()),
            secs(lat.quantile(0.5)),
            secs(lat.quantile(0.99)),
            secs(lat.quantile(0.999)),
            secs(lat.quantile(0.9999)),
        );
    }
    if cpu_rows.is_empty() {
        return;
    }
    println!();
    println!("| scenario | CPU per request, all threads | of it, the writer thread |");
    println!("|---|---|---|");
    for (name, total, writer) in cpu_rows {
        println!("| {name} | {} | {} |", secs(total), secs(writer));
    }
}

fn table(data: &dataset::Dataset, args: &Args, r: &Results) -> Table {
    let mut t = Table::default();
    let c = args.connections;
    if let (Some(v), Some(h)) = (&r.verify_http, &r.healthz) {
        let x = v.rate() / h.rate();
        t.add(
            format!("verify over HTTP, {c} conns"),
            rate(v.rate()),
            format!("healthz {}", rate(h.rate())),
            ratio(x),
            "≥ 0.80×",
            Met::from(x >= 0.8),
        );
        let p99 = v.latency.quantile(0.99);
        t.add(
            format!("verify over HTTP p99, {c} conns"),
            secs(p99),
            format!("healthz {}", secs(h.latency.quantile(0.99))),
            ratio(p99 / h.latency.quantile(0.99)),
            "< 2 ms",
            Met::from(p99 < 2e-3),
        );
    }
    if let Some((v, b)) = r.verify_inproc {
        t.add(
            format!("in-process verify ({} keys)", thousands(data.keys)),
            secs(v),
            format!("SHA-256 + map {}", secs(b)),
            ratio(v / b),
            "≤ 300 ns",
            Met::from(v <= 300e-9),
        );
    }
    if let (Some(cr), Some((fs, _))) = (&r.creates, &r.fsync) {
        let x = cr.rate() / fs;
        t.add(
            format!("durable creates, {c} conns"),
            rate(cr.rate()),
            format!("fsync {}", rate(*fs)),
            ratio(x),
            "≥ 20,000/s and ≥ 5×",
            Met::from(cr.rate() >= 20_000.0 && x >= 5.0),
        );
    }
    if let Some((commands, seconds)) = r.create_batches {
        t.add(
            format!("create batches, {c} conns (info)"),
            format!("{commands:.1} commands/commit"),
            format!("{} per commit", secs(seconds)),
            "-",
            "-",
            Met::NotApplicable,
        );
    }
    if let (Some(lone), Some((_, fl))) = (&r.lone_create, &r.fsync) {
        let (p50, f50) = (lone.latency.quantile(0.5), fl.quantile(0.5));
        t.add(
            "lone create p50 (1 conn)",
            secs(p50),
            format!("fsync p50 {}", secs(f50)),
            format!("+{}", secs(p50 - f50)),
            "≤ fsync + ~1 ms",
            Met::from(p50 - f50 <= 1e-3),
        );
    }
    if let (Some(cu), Some((scan, n))) = (r.catch_up, r.raw_scan) {
        t.add(
            format!("replay (catch_up rebuild, {} events)", thousands(n)),
            rate(cu),
            format!("raw row scan {}", rate(scan)),
            ratio(cu / scan),
            "≥ 1,000,000/s",
            Met::from(cu >= 1e6),
        );
        if let Some(fold) = r.fold {
            t.add(
                "in-memory fold of the log (info)",
                rate(fold),
                format!("raw row scan {}", rate(scan)),
                ratio(fold / scan),
                "-",
                Met::NotApplicable,
            );
        }
    }
    if let Some(s) = &r.startup {
        let full = r.catch_up.map(|cu| data.events as f64 / cu);
        let target_met = if data.keys >= 1_000_000 {
            Met::from(s.secs < 5.0)
        } else {
            Met::NotApplicable
        };
        t.add(
            format!(
                "start-up, {} keys / {} events",
                thousands(s.keys),
                thousands(data.events)
            ),
            secs(s.secs),
            full.map_or("-".into(), |f| format!("full replay {}", secs(f))),
            full.map_or("-".into(), |f| ratio(s.secs / f)),
            "< 5 s at 1M keys",
            target_met,
        );
        let per_key = s.rss_after.saturating_sub(s.rss_before) as f64 / s.keys.max(1) as f64;
        let index = r.index_bytes_per_key;
        t.add(
            "RSS delta per key after open",
            format!("{per_key:.0} B"),
            index.map_or("-".into(), |b| format!("index {b:.0} B")),
            index.map_or("-".into(), |b| ratio(per_key / b)),
            "≤ 300 B/key",
            Met::from(per_key <= 300.0),
        );
        let at_1m = data.keys >= 1_000_000;
        t.add(
            format!("RSS after open ({} keys)", thousands(s.keys)),
            bytes(s.rss_after as f64),
            format!("before open {}", bytes(s.rss_before as f64)),
            "-",
            "≤ 1 GiB at 1M keys",
            if at_1m {
                Met::from(s.rss_after <= 1 << 30)
            } else {
                Met::NotApplicable
            },
        );
    }
    if let Some(b) = r.index_bytes_per_key {
        t.add(
            "verification index per key",
            format!("{b:.0} B"),
            "-",
            "-",
            "≤ 300 B/key",
            Met::from(b <= 300.0),
        );
    }
    if let Some(m) = r.model_bytes_per_key {
        t.add(
            "read model heap per key (info)",
            format!("{m:.0} B"),
            r.index_bytes_per_key
                .map_or("-".into(), |b| format!("index {b:.0} B")),
            r.index_bytes_per_key.map_or("-".into(), |b| ratio(m / b)),
            "-",
            Met::NotApplicable,
        );
    }
    if let Some((list, scan)) = &r.list_search {
        let p99 = list.quantile(0.99);
        t.add(
            format!("list 50 + search p99, {} keys", thousands(data.keys)),
            secs(p99),
            format!("raw name scan {}", secs(scan.quantile(0.99))),
            ratio(p99 / scan.quantile(0.99)),
            "< 20 ms",
            Met::from(p99 < 20e-3),
        );
    }
    if let Some(n) = &r.nats {
        t.add(
            format!("NATS publish ({} events drained)", thousands(n.published)),
            rate(n.publish_rate),
            format!("raw JetStream {}", rate(n.raw_rate)),
            ratio(n.publish_rate / n.raw_rate),
            "≥ 50,000/s",
            Met::from(n.publish_rate >= 50_000.0),
        );
        let p99 = n.lag.quantile(0.99);
        let missing = if n.lag_missing > 0 {
            format!(" ({} unmeasured)", n.lag_missing)
        } else {
            String::new()
        };
        t.add(
            format!("commit→ack lag p99 at {}/s", thousands(nats::LAG_RATE)),
            format!("{}{missing}", secs(p99)),
            format!("p50 {}, {}", secs(n.lag.quantile(0.5)), rate(n.lag_rate)),
            "-",
            "< 20 ms",
            Met::from(p99 < 20e-3 && n.lag_missing == 0),
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_k_and_m_suffixes() {
        assert_eq!(parse_count("1k"), Ok(1_000));
        assert_eq!(parse_count("100K"), Ok(100_000));
        assert_eq!(parse_count("1M"), Ok(1_000_000));
        assert_eq!(parse_count("2_500"), Ok(2_500));
        assert!(parse_count("many").is_err());
    }

    #[test]
    fn samples_skip_the_admin_and_verifier_keys() {
        assert_eq!(sample(10, 3), vec![2, 4, 7]);
        assert_eq!(sample(4, 100), vec![2, 3]);
    }

    #[test]
    fn dataset_secrets_are_well_formed_and_distinct() {
        let a = dataset::secret(5, 0);
        let b = dataset::secret(5, 1);
        assert!(keyledger_core::secret::check_format(a.expose()).is_ok());
        assert_ne!(a.expose(), b.expose());
        assert_eq!(dataset::event_count(1_000), 2 + 3 * 998);
    }

    #[test]
    fn table_renders_every_row() {
        let mut t = Table::default();
        t.add("x", rate(1234.4), "-", ratio(0.5), "≥ 1", Met::from(false));
        let out = t.render();
        assert!(out.contains("1,234/s"));
        assert!(out.contains("**NO**"));
        assert_eq!(out.lines().count(), 3);
    }
}

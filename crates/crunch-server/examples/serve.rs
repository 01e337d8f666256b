//! A stand-in for `crunch serve` while the CLI subcommand is not there: the same options, parsed
//! by hand, passed to `crunch_server::serve`.
//!
//! `cargo run -p crunch-server --example serve -- --listen 127.0.0.1:8080 --models DIR --out DIR
//! [--token-file F] [--jobs 1] [--queue 64] [--registry DB]`

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:8080".to_string();
    let (mut models, mut out, mut token, mut registry) = (Vec::new(), None, None, None);
    let (mut jobs, mut queue) = (1usize, 64usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| anyhow::anyhow!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = val()?,
            "--models" => models.push(PathBuf::from(val()?)),
            "--out" => out = Some(PathBuf::from(val()?)),
            "--token-file" => token = Some(PathBuf::from(val()?)),
            "--registry" => registry = Some(PathBuf::from(val()?)),
            "--jobs" => jobs = val()?.parse()?,
            "--queue" => queue = val()?.parse()?,
            o => anyhow::bail!("unknown option {o}"),
        }
    }
    let out = out.ok_or_else(|| anyhow::anyhow!("give --out DIR"))?;
    let registry = registry.unwrap_or_else(crunch_registry::Registry::default_path);
    let mut opts = crunch_server::ServeOptions::new(listen.parse()?, models, out, registry);
    opts.token_file = token;
    opts.jobs = jobs;
    opts.queue = queue;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(crunch_server::serve(opts))
}

//! The evaluation jobs: `perplexity`, `compare`, `choice`, `bench`.

use super::{
    record_lora, BenchJob, BenchOutcome, ChoiceJob, ChoiceOutcome, CompareJob, CompareOutcome, EmbedCompareJob,
    EmbedCompareOutcome, EmbedJob, EmbedOutcome, GenerateJob, GenerateOutcome, PerplexityJob, PerplexityOutcome,
};
use crate::error::{Error, Result};
use crate::eval::{self, BenchOptions, ChoiceOptions, CompareOptions, CompareReport, EvalOptions};
use crate::job::record::{metric, Recorder};
use crate::job::RunCtx;

fn window(ctx: usize, kind: &str) -> Result<()> {
    if ctx < 4 {
        return Err(Error::field(format!("{kind}.ctx"), format!("{ctx} tokens is too short a chunk (at least 4)")));
    }
    Ok(())
}

pub(crate) fn perplexity(j: &PerplexityJob, ctx: &RunCtx) -> Result<PerplexityOutcome> {
    window(j.ctx, "perplexity")?;
    let opts = EvalOptions { ctx: j.ctx, chunks: j.chunks, exact: j.exact, lora: j.lora.clone() };
    let mut params = serde_json::json!({ "ctx": j.ctx, "chunks": j.chunks, "exact": j.exact });
    let mut inputs = vec![("model", j.model.as_path()), ("text", j.text.as_path())];
    record_lora(&mut params, &mut inputs, &j.lora);
    let rec = Recorder::start("eval", ctx.registry.as_deref(), Some("perplexity".into()), params, &inputs);
    let r = eval::perplexity(&j.model, &j.text, &opts, ctx.progress.as_ref(), &ctx.cancel);
    let (result, run_id) = rec.close(r, |r| {
        vec![
            (metric::PPL, r.ppl),
            (metric::PPL_ERR, r.ppl_err),
            (metric::SECONDS, r.seconds),
            (metric::TOKENS_PER_S, r.tokens_per_second),
        ]
    })?;
    Ok(PerplexityOutcome { result, run_id })
}

pub(crate) fn compare(j: &CompareJob, ctx: &RunCtx) -> Result<CompareOutcome> {
    window(j.ctx, "compare")?;
    if j.top_k == 0 {
        return Err(Error::field("compare.top_k", "must be positive"));
    }
    // The base is run without the adapters: they are applied to the models under test only.
    let opts = CompareOptions {
        eval: EvalOptions { ctx: j.ctx, chunks: j.chunks, exact: j.exact, lora: Vec::new() },
        top_k: j.top_k,
    };
    let progress = ctx.progress.as_ref();
    let mut saved_base = None;
    let base = match (&j.base_logits, &j.base) {
        (Some(_), Some(_)) => return Err(Error::field("compare.base", "give a base model or base_logits, not both")),
        (Some(file), None) => eval::load_base_logits(file)?,
        (None, None) => return Err(Error::field("compare.base", "give the base model (or base_logits)")),
        (None, Some(base)) => {
            if j.models.is_empty() && j.save_base.is_none() {
                return Err(Error::field(
                    "compare.models",
                    "give the models to compare (or save_base to keep the base)",
                ));
            }
            let text =
                j.text.as_ref().ok_or_else(|| Error::field("compare.text", "a text is needed to run the base"))?;
            let t = eval::read_text(text)?;
            let loaded = eval::open_model(base, j.exact)?;
            let b = eval::base_logits(&loaded, &base.display().to_string(), &t, &opts, progress, &ctx.cancel)?;
            if let Some(dest) = &j.save_base {
                let sha = eval::save_base_logits(&b, dest)?;
                saved_base = Some((dest.display().to_string(), sha));
            }
            b
        }
    };
    let mut reports = Vec::new();
    let mut run_ids = Vec::new();
    for q in &j.models {
        ctx.check_cancel()?;
        let mut params =
            serde_json::json!({ "base": base.model, "ctx": base.n_ctx, "chunks": base.n_chunks, "top_k": base.top_k });
        let mut inputs = vec![("model", q.as_path())];
        record_lora(&mut params, &mut inputs, &j.lora);
        let rec = Recorder::start("eval", ctx.registry.as_deref(), Some("compare".into()), params, &inputs);
        let t0 = std::time::Instant::now();
        let stats = eval::open_model_with(q, j.exact, &j.lora, "compare.lora")
            .and_then(|m| eval::compare_with(&base, &m.model, progress, &ctx.cancel));
        let (stats, id) = rec.close(stats, |s| {
            vec![
                (metric::KLD, s.kld.mean),
                (metric::KLD_P99, s.kld.p99),
                (metric::TOP1, s.same_top_pct),
                (metric::PPL, s.ppl_quant),
            ]
        })?;
        let seconds = t0.elapsed().as_secs_f64();
        reports.push(CompareReport {
            base: base.model.clone(),
            quant: q.display().to_string(),
            ctx: base.n_ctx,
            n_chunks: base.n_chunks,
            top_k: base.top_k,
            stats,
            seconds,
            tokens_per_second: (base.n_chunks * base.n_ctx) as f64 / seconds.max(1e-9),
        });
        run_ids.push(id);
    }
    Ok(CompareOutcome { saved_base, base_positions: base.n_positions(), reports, run_ids })
}

pub(crate) fn choice(j: &ChoiceJob, ctx: &RunCtx) -> Result<ChoiceOutcome> {
    let opts = ChoiceOptions { limit: j.limit, exact: j.exact, lora: j.lora.clone() };
    let mut params = serde_json::json!({ "limit": j.limit, "exact": j.exact });
    let mut inputs = vec![("model", j.model.as_path()), ("tasks", j.tasks.as_path())];
    record_lora(&mut params, &mut inputs, &j.lora);
    let rec = Recorder::start("eval", ctx.registry.as_deref(), Some("choice".into()), params, &inputs);
    let r = eval::choice(&j.model, &j.tasks, &opts, ctx.progress.as_ref(), &ctx.cancel);
    let (result, run_id) = rec.close(r, |r| vec![(metric::ACC, r.acc.pct), (metric::ACC_NORM, r.acc_norm.pct)])?;
    Ok(ChoiceOutcome { result, run_id })
}

pub(crate) fn bench(j: &BenchJob, ctx: &RunCtx) -> Result<BenchOutcome> {
    if j.reps == 0 {
        return Err(Error::field("bench.reps", "must be positive"));
    }
    let opts = BenchOptions { pp: j.pp, tg: j.tg, reps: j.reps, exact: j.exact, lora: j.lora.clone() };
    let mut params = serde_json::json!({ "pp": j.pp, "tg": j.tg, "reps": j.reps, "exact": j.exact });
    let mut inputs = vec![("model", j.model.as_path())];
    record_lora(&mut params, &mut inputs, &j.lora);
    let rec = Recorder::start("bench", ctx.registry.as_deref(), None, params, &inputs);
    let r = eval::bench(&j.model, &opts, &ctx.cancel);
    let (result, run_id) = rec.close(r, |r| {
        let mut m = Vec::new();
        for s in &r.results {
            let key = if s.test.starts_with("pp") { metric::PP_TOKENS_PER_S } else { metric::TG_TOKENS_PER_S };
            m.push((key, s.tokens_per_second));
        }
        if let Some(b) = r.peak_rss_bytes {
            m.push((metric::PEAK_RSS_BYTES, b as f64));
        }
        m
    })?;
    Ok(BenchOutcome { result, run_id })
}

pub(crate) fn embed(j: &EmbedJob, ctx: &RunCtx) -> Result<EmbedOutcome> {
    use std::io::Write;
    let opts = crate::eval::embed::EmbedOptions { max_lines: j.max_lines, max_tokens: j.max_tokens, exact: j.exact };
    let records = crate::eval::embed::embed_file(&j.model, &j.text, &opts, ctx.progress.as_ref(), &ctx.cancel)?;
    ctx.check_cancel()?;
    let out = &j.output;
    let mut f = crunch_core::output::AtomicFile::create(out).map_err(|e| Error::io(out, e))?;
    for r in &records {
        serde_json::to_writer(&mut f, r).map_err(|e| Error::io(out, e.into()))?;
        f.write_all(b"\n").map_err(|e| Error::io(out, e))?;
    }
    let sha256 = f.commit().map_err(|e| Error::io(out, e))?;
    Ok(EmbedOutcome { output: out.display().to_string(), embeddings: records.len(), sha256 })
}

pub(crate) fn embed_compare(j: &EmbedCompareJob, ctx: &RunCtx) -> Result<EmbedCompareOutcome> {
    let opts = crate::eval::embed::EmbedOptions { max_lines: j.max_lines, max_tokens: j.max_tokens, exact: j.exact };
    let params = serde_json::json!({ "max_lines": j.max_lines, "max_tokens": j.max_tokens, "exact": j.exact });
    let inputs = [("base", j.base.as_path()), ("model", j.model.as_path()), ("text", j.text.as_path())];
    let rec = Recorder::start("eval", ctx.registry.as_deref(), Some("embed".into()), params, &inputs);
    let r = crate::eval::embed::embed_compare(&j.base, &j.model, &j.text, &opts, ctx.progress.as_ref(), &ctx.cancel);
    let (result, run_id) = rec.close(r, |r| {
        vec![(metric::COSINE_MEAN, r.cosine.mean), (metric::COSINE_P1, r.cosine.p1), (metric::COSINE_MIN, r.cosine.min)]
    })?;
    Ok(EmbedCompareOutcome { result, run_id })
}

pub(crate) fn generate(j: &GenerateJob, ctx: &RunCtx) -> Result<GenerateOutcome> {
    if !(j.top_p > 0.0 && j.top_p <= 1.0) {
        return Err(Error::field("generate.top_p", format!("{} must be in (0, 1]", j.top_p)));
    }
    let opts = crate::eval::RunOptions {
        n_predict: j.n_predict,
        sampler: crunch_model::generate::SamplerOptions {
            temperature: j.temperature,
            top_k: j.top_k,
            top_p: j.top_p,
            seed: j.seed,
        },
        exact: j.exact,
        ignore_eos: j.ignore_eos,
        lora: j.lora.clone(),
    };
    let progress = ctx.progress.as_ref();
    progress.start("generate", j.n_predict as u64);
    let mut n = 0u64;
    let result = eval::run(&j.model, &j.prompt, &opts, &ctx.cancel, &mut |piece| {
        n += 1;
        progress.advance(n, piece);
        true
    })?;
    progress.finish("");
    Ok(GenerateOutcome { result })
}

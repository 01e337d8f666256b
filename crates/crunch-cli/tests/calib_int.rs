//! GPTQ and AWQ onto the group-wise integers of GPU checkpoints (`crunch::calibrate::calibrate_int`,
//! what `crunch export --format gptq|awq|compressed-tensors` calls), on SmolLM2 and real text: the
//! codes decode, and on the F32 model's own activations GPTQ's output error is below
//! round-to-nearest's for the same spec.

mod common;

use crunch::calibrate::{calibrate_int, IntCalibrated, MethodOptions};
use crunch::method::Method;
use crunch::progress::{Cancel, NoProgress};
use crunch_calib::awq::AwqOptions;
use crunch_calib::gptq::GptqOptions;
use crunch_calib::runner::{Group, Layer, Runner};
use crunch_calib::text::{self, ChunkOptions, TextSource};
use crunch_calib::{linalg, Grid};
use crunch_core::gguf::GgufFile;
use crunch_quant::hfq::IntSpec;
use std::sync::Arc;

fn options(method: Method, n_chunks: usize) -> MethodOptions {
    MethodOptions {
        method,
        text: TextSource::File(crunch_testkit::wikitext_dev()),
        chunks: ChunkOptions { n_ctx: 128, n_chunks: Some(n_chunks), skip: 0, shuffle_seed: None },
        gptq: GptqOptions::default(),
        awq: AwqOptions { grid: 4, ..Default::default() },
        prune: None,
    }
}

/// `calibrate_int`, timed.
fn calibrate(file: &Arc<GgufFile>, spec: IntSpec, opts: &MethodOptions) -> IntCalibrated {
    let t0 = std::time::Instant::now();
    let r = calibrate_int(file.clone(), spec, opts, &NoProgress, &Cancel::new()).unwrap();
    eprintln!("calibrate_int {} onto {}: {:.1} s", opts.method, Grid::Int(spec), t0.elapsed().as_secs_f64());
    r
}

/// `‖X (W − Ŵ)ᵀ‖²`.
fn output_error(x: &[f32], n_in: usize, w: &[f32], wq: &[f32]) -> f64 {
    let d: Vec<f32> = w.iter().zip(wq).map(|(a, b)| a - b).collect();
    linalg::matmul_xwt(x, n_in, &d, w.len() / n_in).iter().map(|v| (*v as f64).powi(2)).sum()
}

/// Run the F32 model on the chunks `on` of the calibration text and, for every block linear
/// `effective` gives values for, compare their output error with round-to-nearest's on the same
/// spec: `(name, calibrated, rtn)`.
fn errors_on_f32_model(
    file: &Arc<GgufFile>,
    opts: &MethodOptions,
    on: ChunkOptions,
    spec: IntSpec,
    effective: impl Fn(&str) -> Option<Vec<f32>>,
) -> Vec<(String, f64, f64)> {
    let runner = Runner::new(file.clone()).unwrap();
    let tok = crunch_model::tokenizer::Tokenizer::from_gguf(file).unwrap();
    let chunks = text::load_chunks(&opts.text, &tok, on).unwrap();
    let mut x = runner.embed(&chunks.chunks).unwrap();
    let mut out = Vec::new();
    for i in 0..runner.config.n_layer {
        let mut layer = runner.load_layer(i).unwrap();
        let mut hook = |grp: Group, l: &mut Layer, input: &mut [f32]| -> crunch_calib::Result<()> {
            for lin in l.group_mut(grp) {
                let Some(wq) = effective(&lin.name) else { continue };
                let rtn = Grid::Int(spec).round_trip(&lin.name, &lin.w, lin.n_in, None)?;
                let eg = output_error(input, lin.n_in, &lin.w, &wq);
                let er = output_error(input, lin.n_in, &lin.w, &rtn);
                out.push((lin.name.clone(), eg, er));
            }
            Ok(())
        };
        runner.forward_layer(&mut layer, &mut x, chunks.n_ctx, &mut hook).unwrap();
    }
    out
}

/// The 8 chunks after the calibration chunks.
fn held_out(opts: &MethodOptions) -> ChunkOptions {
    ChunkOptions { skip: opts.chunks.n_chunks.unwrap_or(0), n_chunks: Some(8), ..opts.chunks }
}

/// Print the first and last block's weights, those not below RTN, and the totals; returns (total
/// calibrated, total RTN, weights not below RTN).
fn summary(what: &str, errs: &[(String, f64, f64)]) -> (f64, f64, usize) {
    let (tg, tr) = errs.iter().fold((0.0, 0.0), |(a, b), (_, g, r)| (a + g, b + r));
    for (name, g, r) in errs.iter().filter(|(n, g, r)| n.starts_with("blk.0.") || n.starts_with("blk.29.") || g >= r) {
        eprintln!("{name}: {what} {g:.4e} vs RTN {r:.4e} ({:.2}x)", r / g);
    }
    let worse = errs.iter().filter(|(_, g, r)| g >= r).count();
    eprintln!(
        "all {} weights: {what} {tg:.4e} vs RTN {tr:.4e} ({:.2}x); {worse} weights not below RTN",
        errs.len(),
        tr / tg
    );
    (tg, tr, worse)
}

#[test]
fn gptq_int_on_smollm2_beats_round_to_nearest() {
    let file = Arc::new(GgufFile::open(common::smollm2_f32()).unwrap());
    let spec = IntSpec { bits: 4, group: 64, sym: true, zero_min: 0 };
    let opts = options(Method::Gptq, 4);
    let r = calibrate(&file, spec, &opts);
    assert_eq!(r.groups.len(), 30 * 7, "every block linear rounded");
    assert!(r.values.is_empty() && r.scales.is_empty(), "GPTQ alone rescales nothing");
    for g in r.groups.values() {
        assert!(g.codes.iter().all(|&c| c <= spec.max_code()) && g.zeros.iter().all(|&z| z == spec.mid()));
        assert!(g.dequantize().iter().all(|v| v.is_finite()));
    }
    let decoded = |name: &str| {
        let g = &r.groups[name];
        assert_eq!((g.rows * g.cols, g.spec), (file.tensor(name).unwrap().n_elements() as usize, spec), "{name}");
        Some(g.dequantize())
    };
    // On the calibration tokens (what GPTQ minimizes, though it saw them through the already
    // quantized blocks before) every weight beats round-to-nearest.
    let errs = errors_on_f32_model(&file, &opts, opts.chunks, spec, decoded);
    assert_eq!(errs.len(), 30 * 7);
    let (tg, tr, worse) = summary("GPTQ (calibration text)", &errs);
    assert!(tg < 0.5 * tr, "GPTQ total output error {tg} not well below RTN's {tr}");
    assert_eq!(worse, 0, "weights where GPTQ is not below RTN on its calibration text");
    // On held-out text the total stays well below. (512 calibration tokens for up to 1536 input
    // channels: a few middle ffn_down weights may not generalize, as with GGUF grids.)
    let errs = errors_on_f32_model(&file, &opts, held_out(&opts), spec, decoded);
    let (tg, tr, _) = summary("GPTQ (held-out text)", &errs);
    assert!(tg < 0.5 * tr, "GPTQ total output error {tg} on held-out text not well below RTN's {tr}");
}

/// AWQ then GPTQ, with zero points: GPTQ rounds every linear; the norms and weights AWQ rescaled
/// come back as values (before rounding), and the rounded weights still beat round-to-nearest of
/// those rescaled values.
#[test]
#[ignore = "about a minute on 2 cores: cargo test -p crunch-cli --test calib_int -- --ignored"]
fn awq_gptq_int_on_smollm2_returns_rescaled_values() {
    let file = Arc::new(GgufFile::open(common::smollm2_f32()).unwrap());
    let spec = IntSpec { bits: 4, group: 32, sym: false, zero_min: 0 };
    let opts = options(Method::AwqGptq, 2);
    let r = calibrate(&file, spec, &opts);
    assert_eq!(r.groups.len(), 30 * 7);
    assert!(!r.scales.is_empty(), "AWQ scaled some group");
    let norms = r.values.keys().filter(|n| n.ends_with("_norm.weight")).count();
    eprintln!("{} rescaled tensors, {norms} of them norms", r.values.len());
    for (name, s) in &r.scales {
        assert!(r.values.contains_key(name), "{name}: scaled but its values are missing");
        let info = file.tensor(name).unwrap();
        let n_in = info.dims[0] as usize;
        assert_eq!(s.len(), n_in);
        let v = &r.values[name];
        assert_eq!(v.len(), r.groups[name].codes.len());
        // The rescaled weight is the original's columns times the scales (attn_v and ffn_up
        // also have rows divided by the next group's scales, so only check the others).
        if name.contains("attn_q") || name.contains("attn_k") || name.contains("ffn_gate") {
            let mut w = vec![0f32; v.len()];
            crunch_quant::dequantize_rows(info.ty, file.tensor_data(info), n_in, &mut w).unwrap();
            for (row_w, row_v) in w.chunks(n_in).zip(v.chunks(n_in)).take(4) {
                for ((a, b), f) in row_w.iter().zip(row_v).zip(s) {
                    assert!((a * f - b).abs() <= 1e-5 * b.abs().max(1e-3), "{name}: {a} * {f} vs {b}");
                }
            }
        }
    }
    assert!(norms > 0, "AWQ folded scales into some norm");
    // What the model computes with for the weights whose rows AWQ left alone: GPTQ's codes
    // decoded, columns divided back by the scales (the inputs were divided by them). On the F32
    // model's activations of held-out text this beats round-to-nearest of the original weights.
    let errs = errors_on_f32_model(&file, &opts, held_out(&opts), spec, |name| {
        if name.contains("attn_v") || name.contains("ffn_up") {
            return None;
        }
        let g = &r.groups[name];
        let mut w = g.dequantize();
        if let Some(s) = r.scales.get(name) {
            w.chunks_mut(g.cols).for_each(|row| row.iter_mut().zip(s).for_each(|(v, f)| *v /= f));
        }
        Some(w)
    });
    assert_eq!(errs.len(), 30 * 5);
    let (tg, tr, _) = summary("AWQ+GPTQ", &errs);
    assert!(tg < 0.5 * tr, "AWQ+GPTQ total output error {tg} not well below RTN's {tr}");
}

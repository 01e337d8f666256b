//! Packed single-token products for the formats whose 256-element super-blocks carry small
//! integer sub-scales: Q2_K, Q3_K, Q5_K and IQ4_XS.
//!
//! Key decision: the sub-scales stay integers and the products are summed per row and
//! super-block in integers, as llama.cpp's `vec_dot` kernels do, so only one or two float
//! multiply-adds per super-block remain. Per super-block of a tile of 16 rows (codes interleaved
//! as in [`super`]: step `k` of 4 elements is 64 bytes, 4 codes of each row):
//!
//! - codes: 2-bit (Q2_K, Q3_K) as one plane of 16 vectors of 64 bytes, byte `i` of vector `j`
//!   holding steps `j, j + 16, j + 32, j + 48` in bit pairs 0..8; 4-bit (Q5_K, IQ4_XS) as 32
//!   vectors, step `j` in the low nibble and `j + 32` in the high one; the third (Q3_K) or fifth
//!   (Q5_K) bit as a plane of one 64-bit mask per step. IQ4_XS keeps code-book indices.
//! - sub-scales as bytes `[group][row]`: Q2_K's byte as in GGUF (scale | minimum << 4), Q3_K's
//!   and IQ4_XS's signed scale, Q5_K's 6-bit scales then 6-bit minimums.
//! - the super-block scale `d` (and `dmin`) of each row as f32.
//!
//! So a tile reads 1408 / 1856 / 2944 / 2240 bytes per super-block where the GGUF rows take
//! 1344 / 1760 / 2816 / 2176. Per row and super-block, with `dot_g = Σ code · x` over group `g`
//! and `S_g = Σ x` (the activation's integer sums): `isum = Σ sc_g · dot_g`, `imin = Σ m_g · S_g`
//! (`m` the minimum, or the scale itself for the offset formats), then
//! `y += d·dx·isum − dmin·dx·imin` (Q2_K, Q5_K) or `y += d·dx·(isum − offset·imin)` (Q3_K's codes
//! are stored +4, IQ4_XS's code book +128 for VNNI).

use super::{Act, Format, Kernel, Packed, TILE};
use crunch_core::GgmlType;

/// Elements per super-block.
const SB: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sb {
    Q2K,
    Q3K,
    Q5K,
    Iq4Xs,
}

impl Sb {
    fn of(ty: GgmlType) -> Option<Sb> {
        Some(match ty {
            GgmlType::Q2_K => Sb::Q2K,
            GgmlType::Q3_K => Sb::Q3K,
            GgmlType::Q5_K => Sb::Q5K,
            GgmlType::IQ4_XS => Sb::Iq4Xs,
            _ => return None,
        })
    }

    /// Scale groups per super-block (of 16 or 32 elements).
    fn groups(self) -> usize {
        match self {
            Sb::Q2K | Sb::Q3K => 16,
            Sb::Q5K | Sb::Iq4Xs => 8,
        }
    }

    fn two_bit(self) -> bool {
        matches!(self, Sb::Q2K | Sb::Q3K)
    }

    fn code_bytes(self) -> usize {
        match self {
            Sb::Q2K => 1024,
            Sb::Q3K => 1024 + 512,
            Sb::Q5K => 2048 + 512,
            Sb::Iq4Xs => 2048,
        }
    }

    fn scale_bytes(self) -> usize {
        match self {
            Sb::Q5K => 2 * 8 * TILE,
            s => s.groups() * TILE,
        }
    }

    /// Whether there is a `dmin` per row beside `d`.
    fn has_min(self) -> bool {
        matches!(self, Sb::Q2K | Sb::Q5K)
    }
}

/// One GGUF super-block: codes (0..4, 0..8 with Q3_K's +4, 0..32, or IQ4_XS's indices), the
/// sub-scale bytes as stored in the packing, Q5_K's minimums, `d` and `dmin`.
fn unpack(
    sb: Sb,
    dec: Option<&crate::tiled::Decoder>,
    src: &[u8],
    codes: &mut [u8; SB],
) -> ([u8; 16], [u8; 8], f32, f32) {
    use crate::kquants::read_blocks;
    let (mut sc, mut mn) = ([0u8; 16], [0u8; 8]);
    if let Some(dec) = dec {
        let (mut s16, mut z16) = ([0f32; 16], [0f32; 16]);
        (dec.decode)(src, codes, &mut s16, &mut z16);
    }
    let (d, dmin) = match sb {
        Sb::Q2K => {
            let b = &read_blocks::<crate::kquants::q2_k::BlockQ2K>(src)[0];
            sc = b.scales;
            (b.d.to_f32(), b.dmin.to_f32())
        }
        Sb::Q3K => {
            let b = &read_blocks::<crate::kquants::q3_k::BlockQ3K>(src)[0];
            sc = crate::kquants::q3_k::unpack_scales(&b.scales).map(|v| v as u8);
            (b.d.to_f32(), 0.0)
        }
        Sb::Q5K => {
            let b = &read_blocks::<crate::kquants::q5_k::BlockQ5K>(src)[0];
            let (s, m) = crate::kquants::unpack_scale_min_k4(&b.scales);
            sc[..8].copy_from_slice(&s);
            mn = m;
            (b.d.to_f32(), b.dmin.to_f32())
        }
        Sb::Iq4Xs => {
            let b = &read_blocks::<crate::iquants::iq4_xs::BlockIq4Xs>(src)[0];
            for i in 0..8 {
                sc[i] = b.sub_scale(i) as i8 as u8;
                for j in 0..16 {
                    let q = b.qs[16 * i + j];
                    codes[32 * i + j] = q & 15;
                    codes[32 * i + 16 + j] = q >> 4;
                }
            }
            (b.d.to_f32(), 0.0)
        }
    };
    (sc, mn, d, dmin)
}

/// Repack `n_out` rows of `n_in` (a multiple of 256) elements of `ty`; `None` for another type,
/// shape or byte count.
pub(super) fn pack(kernel: Kernel, ty: GgmlType, fmt: Format, w: &[u8], n_in: usize, n_out: usize) -> Option<Packed> {
    use rayon::prelude::*;
    let sb = Sb::of(ty)?;
    if n_in == 0 || !n_in.is_multiple_of(SB) {
        return None;
    }
    let type_size = ty.type_size();
    let row_bytes = n_in / SB * type_size;
    if w.len() != row_bytes.checked_mul(n_out)? {
        return None;
    }
    let dec = match sb {
        Sb::Iq4Xs => None,
        _ => Some(crate::tiled::decoder(ty)?),
    };
    let (code_bytes, scale_bytes) = (sb.code_bytes(), sb.scale_bytes());
    let block_bytes = code_bytes + scale_bytes + if sb.has_min() { 2 } else { 1 } * TILE * 4;
    let (nb, tiles) = (n_in / SB, n_out.div_ceil(TILE));
    let offset = match sb {
        Sb::Q3K => 4,
        Sb::Iq4Xs if kernel == Kernel::Vnni512 => 128,
        _ => 0,
    };
    let mut p = Packed {
        ty,
        fmt,
        kernel,
        n_in,
        n_out,
        tiles,
        nb,
        code_bytes,
        scale_bytes,
        block_bytes,
        offset,
        sb: Some(sb),
        data: vec![0u8; tiles * nb * block_bytes],
    };
    p.data.par_chunks_mut(nb * block_bytes).enumerate().for_each(|(t, tile)| {
        let mut codes = [0u8; SB];
        for lane in 0..TILE.min(n_out - t * TILE) {
            let row = &w[(t * TILE + lane) * row_bytes..(t * TILE + lane + 1) * row_bytes];
            for (b, src) in row.chunks_exact(type_size).enumerate() {
                let blk = &mut tile[b * block_bytes..(b + 1) * block_bytes];
                let (sc, mn, d, dmin) = unpack(sb, dec.as_ref(), src, &mut codes);
                for (e, &c) in codes.iter().enumerate() {
                    let (k, i) = (e / 4, lane * 4 + e % 4);
                    let high = if sb.two_bit() {
                        blk[64 * (k % 16) + i] |= (c & 3) << (2 * (k / 16));
                        c & 4 != 0 && sb == Sb::Q3K
                    } else {
                        blk[64 * (k % 32) + i] |= (c & 15) << (4 * (k / 32));
                        c & 16 != 0 && sb == Sb::Q5K
                    };
                    let plane = if sb.two_bit() { 1024 } else { 2048 };
                    if high {
                        blk[plane + 8 * k + i / 8] |= 1 << (i % 8);
                    }
                }
                for g in 0..sb.groups() {
                    blk[code_bytes + TILE * g + lane] = sc[g];
                    if sb == Sb::Q5K {
                        blk[code_bytes + 8 * TILE + TILE * g + lane] = mn[g];
                    }
                }
                let fo = code_bytes + scale_bytes + 4 * lane;
                blk[fo..fo + 4].copy_from_slice(&d.to_le_bytes());
                if sb.has_min() {
                    blk[fo + 4 * TILE..fo + 4 * TILE + 4].copy_from_slice(&dmin.to_le_bytes());
                }
            }
        }
    });
    Some(p)
}

/// The code of element `e` (0..256) of row `lane` as the kernels multiply it.
fn code_at(p: &Packed, sb: Sb, blk: &[u8], lane: usize, e: usize) -> i32 {
    let (k, i) = (e / 4, lane * 4 + e % 4);
    let bit = |plane: usize| ((blk[plane + 8 * k + i / 8] >> (i % 8)) & 1) as i32;
    match sb {
        Sb::Q2K => ((blk[64 * (k % 16) + i] >> (2 * (k / 16))) & 3) as i32,
        Sb::Q3K => ((blk[64 * (k % 16) + i] >> (2 * (k / 16))) & 3) as i32 | bit(1024) << 2,
        Sb::Q5K => ((blk[64 * (k % 32) + i] >> (4 * (k / 32))) & 15) as i32 | bit(2048) << 4,
        Sb::Iq4Xs => {
            let v = super::table(p.kernel)[((blk[64 * (k % 32) + i] >> (4 * (k / 32))) & 15) as usize];
            if p.offset == 128 {
                v as i32
            } else {
                v as i8 as i32
            }
        }
    }
}

/// Sub-scale and minimum multiplier (`m_g` above) of group `g` of row `lane`.
fn scale_at(p: &Packed, sb: Sb, blk: &[u8], lane: usize, g: usize) -> (i32, i32) {
    let v = blk[p.code_bytes + TILE * g + lane];
    match sb {
        Sb::Q2K => ((v & 15) as i32, (v >> 4) as i32),
        Sb::Q3K | Sb::Iq4Xs => (v as i8 as i32, v as i8 as i32),
        Sb::Q5K => (v as i32, blk[p.code_bytes + 8 * TILE + TILE * g + lane] as i32),
    }
}

fn f32_at(blk: &[u8], o: usize) -> f32 {
    f32::from_le_bytes([blk[o], blk[o + 1], blk[o + 2], blk[o + 3]])
}

/// Scalar reference of one tile: per super-block the integer sums `isum` and `imin`, then one
/// or two fused multiply-adds in the order the SIMD kernels use.
pub(super) fn scalar(p: &Packed, sb: Sb, tile: &[u8], act: &Act) -> [f32; TILE] {
    let per = SB / sb.groups();
    let mut out = [0f32; TILE];
    for (lane, o) in out.iter_mut().enumerate() {
        let mut acc = 0f32;
        for b in 0..p.nb {
            let blk = &tile[b * p.block_bytes..(b + 1) * p.block_bytes];
            let (mut isum, mut imin) = (0i32, 0i32);
            for g in 0..sb.groups() {
                let e0 = b * SB + g * per;
                let mut dot = 0i32;
                for e in 0..per {
                    dot += code_at(p, sb, blk, lane, g * per + e) * act.q[e0 + e] as i32;
                }
                let s: i32 = act.s16[e0 / 16..(e0 + per) / 16].iter().sum();
                let (sc, m) = scale_at(p, sb, blk, lane, g);
                isum += sc * dot;
                imin += m * s;
            }
            let dx = act.d[b * SB / 32];
            let fo = p.code_bytes + p.scale_bytes + 4 * lane;
            let d = f32_at(blk, fo);
            if sb.has_min() {
                let dmin = f32_at(blk, fo + 4 * TILE);
                acc = (isum as f32).mul_add(d * dx, acc);
                acc = (imin as f32).mul_add(-(dmin * dx), acc);
            } else {
                acc = ((isum - p.offset * imin) as f32).mul_add(d * dx, acc);
            }
        }
        *o = acc;
    }
    out
}

/// One tile with the packing's kernel (which the CPU runs, and `tile`/`act` of the packing's
/// lengths: checked by the caller).
pub(super) fn tile(p: &Packed, sb: Sb, tile: &[u8], act: &Act) -> [f32; TILE] {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `Packed::gemv` (and the tests) call this only for a kernel `Kernel::runs`
        // reports, and `Packed::tile` asserted the tile and activation lengths.
        match p.kernel {
            Kernel::Vnni512 => unsafe {
                return match sb {
                    Sb::Q2K => x86::vnni::<0>(p, tile, act),
                    Sb::Q3K => x86::vnni::<1>(p, tile, act),
                    Sb::Q5K => x86::vnni::<2>(p, tile, act),
                    Sb::Iq4Xs => x86::vnni::<3>(p, tile, act),
                };
            },
            Kernel::Avx2 => unsafe {
                return match sb {
                    Sb::Q2K => x86::avx2::<0>(p, tile, act),
                    Sb::Q3K => x86::avx2::<1>(p, tile, act),
                    Sb::Q5K => x86::avx2::<2>(p, tile, act),
                    Sb::Iq4Xs => x86::avx2::<3>(p, tile, act),
                };
            },
            Kernel::Scalar => {}
        }
    }
    scalar(p, sb, tile, act)
}

/// `K`: 0 Q2_K, 1 Q3_K, 2 Q5_K, 3 IQ4_XS.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Act, Packed, SB, TILE};
    use std::arch::x86_64::*;

    /// AVX-512 VNNI: one `vpdpbusd` per step of 4 codes of the 16 rows, an integer multiply by
    /// the sub-scales per group.
    ///
    /// # Safety
    /// AVX2, FMA, F16C, AVX-512F/BW and VNNI must be available; `tile` is `p.nb` packed
    /// super-blocks and `act` holds `p.n_in` codes with their sums (checked by the caller).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn vnni<const K: u8>(p: &Packed, tile: &[u8], act: &Act) -> [f32; TILE] {
        let m4 = _mm512_set1_epi8(0x0f);
        let m3 = _mm512_set1_epi8(3);
        let high = _mm512_set1_epi8(if K == 1 { 4 } else { 16 });
        let tbl = _mm512_broadcast_i32x4(_mm_loadu_si128(super::super::table(p.kernel).as_ptr().cast()));
        let mut acc = _mm512_setzero_ps();
        let tp = tile.as_ptr();
        let xp = act.q.as_ptr().cast::<i32>();
        for b in 0..p.nb {
            // SAFETY (all reads below): super-block b lies inside `tile` (p.nb blocks of
            // block_bytes); code vectors, masks, sub-scales and floats are at the offsets
            // `pack` wrote them; the 64 activation words of super-block b are inside act.q.
            let blk = unsafe { tp.add(b * p.block_bytes) };
            let scb = unsafe { blk.add(p.code_bytes) };
            let s16 = &act.s16[b * 16..b * 16 + 16];
            macro_rules! x {
                ($k:expr) => {
                    _mm512_set1_epi32(unsafe { xp.add(b * SB / 4 + $k).read_unaligned() })
                };
            }
            let mut isum = _mm512_setzero_si512();
            let mut imin = _mm512_setzero_si512();
            let mut group = |g: usize, dot: __m512i, s: i32| {
                let raw = unsafe { _mm_loadu_si128(scb.add(TILE * g).cast()) };
                let (sc, m) = match K {
                    0 => {
                        let v = _mm512_cvtepu8_epi32(raw);
                        (_mm512_and_si512(v, _mm512_set1_epi32(15)), _mm512_srli_epi32::<4>(v))
                    }
                    2 => {
                        let mn = unsafe { _mm_loadu_si128(scb.add(8 * TILE + TILE * g).cast()) };
                        (_mm512_cvtepu8_epi32(raw), _mm512_cvtepu8_epi32(mn))
                    }
                    _ => {
                        let v = _mm512_cvtepi8_epi32(raw);
                        (v, v)
                    }
                };
                isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(dot, sc));
                imin = _mm512_add_epi32(imin, _mm512_mullo_epi32(m, _mm512_set1_epi32(s)));
            };
            if K <= 1 {
                for q in 0..4 {
                    let v: [__m512i; 4] =
                        std::array::from_fn(|u| unsafe { _mm512_loadu_si512(blk.add(64 * (4 * q + u)).cast()) });
                    for t in 0..4 {
                        let cnt = _mm_cvtsi32_si128(2 * t as i32);
                        let mut dot = _mm512_setzero_si512();
                        for u in 0..4 {
                            let k = 16 * t + 4 * q + u;
                            let mut c = _mm512_and_si512(_mm512_srl_epi16(v[u], cnt), m3);
                            if K == 1 {
                                let mk: __mmask64 = unsafe { blk.add(1024 + 8 * k).cast::<u64>().read_unaligned() };
                                c = _mm512_mask_add_epi8(c, mk, c, high);
                            }
                            dot = _mm512_dpbusd_epi32(dot, c, x!(k));
                        }
                        let g = 4 * t + q;
                        group(g, dot, s16[g]);
                    }
                }
            } else {
                for q in 0..4 {
                    let mut dlo = _mm512_setzero_si512();
                    let mut dhi = _mm512_setzero_si512();
                    for u in 0..8 {
                        let j = 8 * q + u;
                        let v = unsafe { _mm512_loadu_si512(blk.add(64 * j).cast()) };
                        let mut lo = _mm512_and_si512(v, m4);
                        let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
                        if K == 2 {
                            let ml: __mmask64 = unsafe { blk.add(2048 + 8 * j).cast::<u64>().read_unaligned() };
                            let mh: __mmask64 = unsafe { blk.add(2048 + 8 * (j + 32)).cast::<u64>().read_unaligned() };
                            lo = _mm512_mask_add_epi8(lo, ml, lo, high);
                            hi = _mm512_mask_add_epi8(hi, mh, hi, high);
                        } else {
                            lo = _mm512_shuffle_epi8(tbl, lo);
                            hi = _mm512_shuffle_epi8(tbl, hi);
                        }
                        dlo = _mm512_dpbusd_epi32(dlo, lo, x!(j));
                        dhi = _mm512_dpbusd_epi32(dhi, hi, x!(j + 32));
                    }
                    group(q, dlo, s16[2 * q] + s16[2 * q + 1]);
                    group(q + 4, dhi, s16[2 * q + 8] + s16[2 * q + 9]);
                }
            }
            let dx = _mm512_set1_ps(act.d[b * SB / 32]);
            let fl = unsafe { scb.add(p.scale_bytes).cast::<f32>() };
            let d = unsafe { _mm512_loadu_ps(fl) };
            if K == 0 || K == 2 {
                let dmin = unsafe { _mm512_loadu_ps(fl.add(TILE)) };
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(d, dx), acc);
                acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(imin), _mm512_mul_ps(dmin, dx), acc);
            } else {
                let tot = _mm512_sub_epi32(isum, _mm512_mullo_epi32(imin, _mm512_set1_epi32(p.offset)));
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot), _mm512_mul_ps(d, dx), acc);
            }
        }
        let mut out = [0f32; TILE];
        // SAFETY: `out` holds 16 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), acc) };
        out
    }

    /// 8 rows' sub-scales (`i32` lanes) as the `i16` pairs `vpmaddwd` multiplies.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn pairs(v: __m256i) -> __m256i {
        _mm256_blend_epi16::<0xAA>(v, _mm256_slli_epi32::<16>(v))
    }

    /// AVX2 as two halves of 8 rows: `vpmaddubsw` per step (IQ4_XS with the sign trick), the
    /// `i16` sums of up to 4 steps multiplied by the sub-scales with `vpmaddwd`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; lengths as for [`vnni`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn avx2<const K: u8>(p: &Packed, tile: &[u8], act: &Act) -> [f32; TILE] {
        use crate::legacy::simd::bits_to_byte_mask;
        let m4 = _mm256_set1_epi8(0x0f);
        let m3 = _mm256_set1_epi8(3);
        let high = _mm256_set1_epi8(if K == 1 { 4 } else { 16 });
        let t16 = unsafe { _mm_loadu_si128(super::super::table(p.kernel).as_ptr().cast()) };
        let tbl = _mm256_set_m128i(t16, t16);
        let mut acc = [_mm256_setzero_ps(); 2];
        let tp = tile.as_ptr();
        let xp = act.q.as_ptr().cast::<i32>();
        for b in 0..p.nb {
            // SAFETY (all reads below): as in the VNNI kernel; half h reads bytes 32h..32h + 32
            // of each 64-byte step, bits 32h.. of each mask, and sub-scales and floats of its rows.
            let blk = unsafe { tp.add(b * p.block_bytes) };
            let scb = unsafe { blk.add(p.code_bytes) };
            let s16 = &act.s16[b * 16..b * 16 + 16];
            macro_rules! x {
                ($k:expr) => {
                    _mm256_set1_epi32(unsafe { xp.add(b * SB / 4 + $k).read_unaligned() })
                };
            }
            let dx = _mm256_set1_ps(act.d[b * SB / 32]);
            for h in 0..2 {
                let mut isum = _mm256_setzero_si256();
                let mut imin = _mm256_setzero_si256();
                // group g's sub-scales as i16 pairs, after adding its minimum term to `imin`
                let mut scales = |g: usize, s: i32| -> __m256i {
                    let raw = unsafe { _mm_loadl_epi64(scb.add(TILE * g + 8 * h).cast()) };
                    let (sc, m) = match K {
                        0 => {
                            let v = _mm256_cvtepu8_epi32(raw);
                            (_mm256_and_si256(v, _mm256_set1_epi32(15)), _mm256_srli_epi32::<4>(v))
                        }
                        2 => {
                            let mn = unsafe { _mm_loadl_epi64(scb.add(8 * TILE + TILE * g + 8 * h).cast()) };
                            (_mm256_cvtepu8_epi32(raw), _mm256_cvtepu8_epi32(mn))
                        }
                        _ => {
                            let v = _mm256_cvtepi8_epi32(raw);
                            (v, v)
                        }
                    };
                    // m · S with S (|S| ≤ 32 · 127) in the low i16 of each pair, 0 in the high one
                    imin = _mm256_add_epi32(imin, _mm256_madd_epi16(m, _mm256_set1_epi32(s & 0xffff)));
                    pairs(sc)
                };
                let mut sums = _mm256_setzero_si256();
                if K <= 1 {
                    for q in 0..4 {
                        let v: [__m256i; 4] = std::array::from_fn(|u| unsafe {
                            _mm256_loadu_si256(blk.add(64 * (4 * q + u) + 32 * h).cast())
                        });
                        for t in 0..4 {
                            let cnt = _mm_cvtsi32_si128(2 * t as i32);
                            let mut p16 = _mm256_setzero_si256();
                            for u in 0..4 {
                                let k = 16 * t + 4 * q + u;
                                let mut c = _mm256_and_si256(_mm256_srl_epi16(v[u], cnt), m3);
                                if K == 1 {
                                    let mk =
                                        unsafe { blk.add(1024 + 8 * k + 4 * h).cast::<[u8; 4]>().read_unaligned() };
                                    c = _mm256_or_si256(c, _mm256_and_si256(bits_to_byte_mask(mk), high));
                                }
                                // codes ≤ 7: four steps' pair sums stay within i16
                                p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(c, x!(k)));
                            }
                            let g = 4 * t + q;
                            let sc = scales(g, s16[g]);
                            sums = _mm256_add_epi32(sums, _mm256_madd_epi16(p16, sc));
                        }
                    }
                } else {
                    for q in 0..4 {
                        let sl = scales(q, s16[2 * q] + s16[2 * q + 1]);
                        let sh = scales(q + 4, s16[2 * q + 8] + s16[2 * q + 9]);
                        let mut plo = _mm256_setzero_si256();
                        let mut phi = _mm256_setzero_si256();
                        for u in 0..8 {
                            let j = 8 * q + u;
                            let v = unsafe { _mm256_loadu_si256(blk.add(64 * j + 32 * h).cast()) };
                            let mut lo = _mm256_and_si256(v, m4);
                            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                            if K == 2 {
                                let ml = unsafe { blk.add(2048 + 8 * j + 4 * h).cast::<[u8; 4]>().read_unaligned() };
                                let mh =
                                    unsafe { blk.add(2048 + 8 * (j + 32) + 4 * h).cast::<[u8; 4]>().read_unaligned() };
                                lo = _mm256_or_si256(lo, _mm256_and_si256(bits_to_byte_mask(ml), high));
                                hi = _mm256_or_si256(hi, _mm256_and_si256(bits_to_byte_mask(mh), high));
                                // codes ≤ 31: four steps' pair sums stay within i16
                                plo = _mm256_add_epi16(plo, _mm256_maddubs_epi16(lo, x!(j)));
                                phi = _mm256_add_epi16(phi, _mm256_maddubs_epi16(hi, x!(j + 32)));
                                if u % 4 == 3 {
                                    sums = _mm256_add_epi32(sums, _mm256_madd_epi16(plo, sl));
                                    sums = _mm256_add_epi32(sums, _mm256_madd_epi16(phi, sh));
                                    plo = _mm256_setzero_si256();
                                    phi = _mm256_setzero_si256();
                                }
                            } else {
                                // signed code-book values: |w| · (x with w's sign), one step at a time
                                lo = _mm256_shuffle_epi8(tbl, lo);
                                hi = _mm256_shuffle_epi8(tbl, hi);
                                let (xl, xh) = (x!(j), x!(j + 32));
                                let pl = _mm256_maddubs_epi16(_mm256_sign_epi8(lo, lo), _mm256_sign_epi8(xl, lo));
                                let ph = _mm256_maddubs_epi16(_mm256_sign_epi8(hi, hi), _mm256_sign_epi8(xh, hi));
                                sums = _mm256_add_epi32(sums, _mm256_madd_epi16(pl, sl));
                                sums = _mm256_add_epi32(sums, _mm256_madd_epi16(ph, sh));
                            }
                        }
                    }
                }
                isum = _mm256_add_epi32(isum, sums);
                let fl = unsafe { scb.add(p.scale_bytes).cast::<f32>().add(8 * h) };
                let d = unsafe { _mm256_loadu_ps(fl) };
                if K == 0 || K == 2 {
                    let dmin = unsafe { _mm256_loadu_ps(fl.add(TILE)) };
                    acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, dx), acc[h]);
                    acc[h] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_mul_ps(dmin, dx), acc[h]);
                } else {
                    let tot = _mm256_sub_epi32(isum, _mm256_mullo_epi32(imin, _mm256_set1_epi32(p.offset)));
                    acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot), _mm256_mul_ps(d, dx), acc[h]);
                }
            }
        }
        let mut out = [0f32; TILE];
        // SAFETY: `out` holds 16 floats: two stores of 8.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), acc[1]);
        }
        out
    }
}

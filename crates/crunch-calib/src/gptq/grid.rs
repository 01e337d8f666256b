//! The grid of a GGUF block: what values each position of an already-encoded block can take when
//! only its codes change and its scales stay.
//!
//! For every type here, position `p` of a block dequantizes to `a_p * T(code) + b_p`, with `T`
//! the identity (integer codes) or a fixed code book (IQ4). Only the bit layout of the codes is
//! written per type ([`TypeGrid::pack`]); `a_p` and `b_p` are read off the type's real
//! dequantizer by packing two constant code patterns into the block, so scales, mins and their
//! encodings (f16, 6-bit packed, signed) are never decoded by hand.

use crunch_core::GgmlType;

/// The values codes stand for.
#[derive(Clone, Copy, Debug)]
pub enum Levels {
    /// Codes `0..n` stand for `0..n`.
    Linear(u16),
    /// Codes index a code book (sorted ascending).
    Table(&'static [f32]),
}

impl Levels {
    pub fn count(&self) -> usize {
        match self {
            Levels::Linear(n) => *n as usize,
            Levels::Table(t) => t.len(),
        }
    }

    #[inline]
    pub fn value(&self, code: u8) -> f32 {
        match self {
            Levels::Linear(_) => code as f32,
            Levels::Table(t) => t[code as usize],
        }
    }

    /// The code whose value is nearest to `t`.
    #[inline]
    pub fn nearest(&self, t: f32) -> u8 {
        match self {
            Levels::Linear(n) => t.round().clamp(0.0, (*n - 1) as f32) as u8,
            Levels::Table(tab) => {
                let i = tab.partition_point(|&v| v < t);
                if i == 0 {
                    0
                } else if i >= tab.len() {
                    (tab.len() - 1) as u8
                } else if (t - tab[i - 1]) <= (tab[i] - t) {
                    (i - 1) as u8
                } else {
                    i as u8
                }
            }
        }
    }

    /// Codes used to probe a block: the smallest and the largest level.
    fn probes(&self) -> (u8, u8) {
        (0, (self.count() - 1) as u8)
    }
}

/// How codes sit in one type's blocks.
pub struct TypeGrid {
    pub ty: GgmlType,
    pub levels: Levels,
    /// Overwrite the codes of one block (`codes.len()` = block size) keeping its scales.
    pub pack: fn(block: &mut [u8], codes: &[u8]),
}

static IQ4_TABLE: [f32; 16] =
    [-127., -104., -83., -65., -49., -35., -22., -10., 1., 13., 25., 38., 53., 69., 89., 113.];

fn nibbles(qs: &mut [u8], codes: &[u8]) {
    let h = codes.len() / 2;
    for (j, q) in qs[..h].iter_mut().enumerate() {
        *q = (codes[j] & 0xF) | (codes[j + h] & 0xF) << 4;
    }
}

fn high_bits32(qh: &mut [u8], codes: &[u8]) {
    let mut bits = 0u32;
    for (e, &c) in codes.iter().enumerate() {
        bits |= (((c >> 4) & 1) as u32) << e;
    }
    qh[..4].copy_from_slice(&bits.to_le_bytes());
}

fn pack_q4_0(b: &mut [u8], c: &[u8]) {
    nibbles(&mut b[2..18], c);
}
fn pack_q4_1(b: &mut [u8], c: &[u8]) {
    nibbles(&mut b[4..20], c);
}
fn pack_q5_0(b: &mut [u8], c: &[u8]) {
    high_bits32(&mut b[2..6], c);
    nibbles(&mut b[6..22], c);
}
fn pack_q5_1(b: &mut [u8], c: &[u8]) {
    high_bits32(&mut b[4..8], c);
    nibbles(&mut b[8..24], c);
}
fn pack_q8_0(b: &mut [u8], c: &[u8]) {
    for (q, &c) in b[2..34].iter_mut().zip(c) {
        *q = c ^ 0x80;
    }
}
fn pack_iq4_xs(b: &mut [u8], c: &[u8]) {
    for (ib, q) in b[8..136].chunks_exact_mut(16).enumerate() {
        nibbles(q, &c[32 * ib..32 * ib + 32]);
    }
}
/// Q4_K / Q5_K low nibbles: 64 values per 32 bytes, value `64g + l` low, `64g + 32 + l` high.
fn k_nibbles(qs: &mut [u8], c: &[u8]) {
    for (g, q) in qs.chunks_exact_mut(32).enumerate() {
        nibbles(q, &c[64 * g..64 * g + 64]);
    }
}
fn pack_q4_k(b: &mut [u8], c: &[u8]) {
    k_nibbles(&mut b[16..144], c);
}
fn pack_q5_k(b: &mut [u8], c: &[u8]) {
    let qh = &mut b[16..48];
    qh.fill(0);
    for g in 0..4 {
        for l in 0..32 {
            qh[l] |= ((c[64 * g + l] >> 4) & 1) << (2 * g) | ((c[64 * g + 32 + l] >> 4) & 1) << (2 * g + 1);
        }
    }
    k_nibbles(&mut b[48..176], c);
}
fn pack_q6_k(b: &mut [u8], c: &[u8]) {
    let (ql, rest) = b.split_at_mut(128);
    let qh = &mut rest[..64];
    for n in 0..2 {
        for l in 0..32 {
            let e = 128 * n + l;
            let (c1, c2, c3, c4) = (c[e], c[e + 32], c[e + 64], c[e + 96]);
            ql[64 * n + l] = (c1 & 0xF) | (c3 & 0xF) << 4;
            ql[64 * n + l + 32] = (c2 & 0xF) | (c4 & 0xF) << 4;
            qh[32 * n + l] = (c1 >> 4) | (c2 >> 4) << 2 | (c3 >> 4) << 4 | (c4 >> 4) << 6;
        }
    }
}
/// 2-bit fields shared by Q2_K and Q3_K: value `128n + 32j + l` in bits `2j` of byte `32n + l`.
fn two_bits(qs: &mut [u8], c: &[u8]) {
    for n in 0..2 {
        for l in 0..32 {
            let mut v = 0u8;
            for j in 0..4 {
                v |= (c[128 * n + 32 * j + l] & 3) << (2 * j);
            }
            qs[32 * n + l] = v;
        }
    }
}
fn pack_q2_k(b: &mut [u8], c: &[u8]) {
    two_bits(&mut b[16..80], c);
}
fn pack_q3_k(b: &mut [u8], c: &[u8]) {
    let hmask = &mut b[..32];
    hmask.fill(0);
    for n in 0..2 {
        for j in 0..4 {
            for l in 0..32 {
                hmask[l] |= ((c[128 * n + 32 * j + l] >> 2) & 1) << (4 * n + j);
            }
        }
    }
    two_bits(&mut b[32..96], c);
}

static GRIDS: &[TypeGrid] = &[
    TypeGrid { ty: GgmlType::Q4_0, levels: Levels::Linear(16), pack: pack_q4_0 },
    TypeGrid { ty: GgmlType::Q4_1, levels: Levels::Linear(16), pack: pack_q4_1 },
    TypeGrid { ty: GgmlType::Q5_0, levels: Levels::Linear(32), pack: pack_q5_0 },
    TypeGrid { ty: GgmlType::Q5_1, levels: Levels::Linear(32), pack: pack_q5_1 },
    TypeGrid { ty: GgmlType::Q8_0, levels: Levels::Linear(256), pack: pack_q8_0 },
    TypeGrid { ty: GgmlType::IQ4_NL, levels: Levels::Table(&IQ4_TABLE), pack: pack_q4_0 },
    TypeGrid { ty: GgmlType::IQ4_XS, levels: Levels::Table(&IQ4_TABLE), pack: pack_iq4_xs },
    TypeGrid { ty: GgmlType::Q2_K, levels: Levels::Linear(4), pack: pack_q2_k },
    TypeGrid { ty: GgmlType::Q3_K, levels: Levels::Linear(8), pack: pack_q3_k },
    TypeGrid { ty: GgmlType::Q4_K, levels: Levels::Linear(16), pack: pack_q4_k },
    TypeGrid { ty: GgmlType::Q5_K, levels: Levels::Linear(32), pack: pack_q5_k },
    TypeGrid { ty: GgmlType::Q6_K, levels: Levels::Linear(64), pack: pack_q6_k },
];

/// The grid description of `ty`, if GPTQ can round onto it.
pub fn type_grid(ty: GgmlType) -> Option<&'static TypeGrid> {
    GRIDS.iter().find(|g| g.ty == ty)
}

/// Types GPTQ rounds onto exactly.
pub fn gptq_types() -> Vec<GgmlType> {
    GRIDS.iter().map(|g| g.ty).collect()
}

impl TypeGrid {
    /// `(a_p, b_p)` of every position of `block` (one encoded block), from the real dequantizer.
    pub fn affine(&self, block: &[u8], a: &mut [f32], b: &mut [f32]) {
        let k = crunch_quant::kernels(self.ty).expect("grid types have kernels");
        let n = a.len();
        let (c1, c2) = self.levels.probes();
        let (t1, t2) = (self.levels.value(c1), self.levels.value(c2));
        let mut tmp = block.to_vec();
        let mut y1 = vec![0f32; n];
        let mut y2 = vec![0f32; n];
        (self.pack)(&mut tmp, &vec![c1; n]);
        (k.dequantize)(&tmp, &mut y1);
        (self.pack)(&mut tmp, &vec![c2; n]);
        (k.dequantize)(&tmp, &mut y2);
        for p in 0..n {
            a[p] = (y2[p] - y1[p]) / (t2 - t1);
            b[p] = y1[p] - a[p] * t1;
        }
    }

    /// The code nearest to `x` on the grid `(a, b)`.
    #[inline]
    pub fn round(&self, x: f32, a: f32, b: f32) -> u8 {
        if a == 0.0 || !a.is_finite() {
            return 0;
        }
        self.levels.nearest((x - b) / a)
    }
}

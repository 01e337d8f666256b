//! The key/value cache: per layer, the rotated keys and the values of every position so far.

/// K and V of `len` positions for each layer, room for `n_ctx`.
#[derive(Clone, Debug)]
pub struct KvCache {
    n_ctx: usize,
    n_embd_kv: usize,
    len: usize,
    /// Per layer, `n_ctx × n_embd_kv` (rows by position).
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
}

impl KvCache {
    pub fn new(n_layer: usize, n_ctx: usize, n_embd_kv: usize) -> Self {
        KvCache {
            n_ctx,
            n_embd_kv,
            len: 0,
            k: vec![vec![0f32; n_ctx * n_embd_kv]; n_layer],
            v: vec![vec![0f32; n_ctx * n_embd_kv]; n_layer],
        }
    }

    /// Positions stored.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity in positions.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn n_embd_kv(&self) -> usize {
        self.n_embd_kv
    }

    pub fn n_layer(&self) -> usize {
        self.k.len()
    }

    /// Forget everything (llama.cpp's `llama_memory_clear`).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Drop positions from `len` on (to rewind generation).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len.min(self.n_ctx);
    }
}

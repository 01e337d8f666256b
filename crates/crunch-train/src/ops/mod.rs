//! The ops of crunch's Llama block, each a forward and its vector-Jacobian product (backward),
//! generic over `Float` and mirroring crunch-model's forward math.
//!
//! The residual add `y = x + f(x)` needs no op of its own: its backward hands `dy` to both
//! branches and sums the two gradients of `x` ([`add_assign`]).

pub mod attention;
pub mod gguf_weight;
pub mod linear;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod swiglu;

pub use attention::{attention, attention_backward, AttnShape};
pub use gguf_weight::GgufWeight;
pub use linear::{Dense, Frozen, Linear, LinearGrad, LinearTape, LinearWeight, Lora, LoraGrad, SteWeight};
pub use norm::{rms_norm, rms_norm_apply, rms_norm_backward};
pub use rope::{rope, rope_backward};
pub use swiglu::{silu, swiglu, swiglu_backward};

use crate::float::Float;

/// `x += y` element-wise (the residual add, forward and the gradient sum of its backward).
pub fn add_assign<T: Float>(x: &mut [T], y: &[T]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

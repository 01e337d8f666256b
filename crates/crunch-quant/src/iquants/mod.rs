//! iquants block formats.

use crate::Kernels;
use crunch_core::GgmlType;

pub(crate) fn kernels(_ty: GgmlType) -> Option<&'static Kernels> {
    None
}

//! `TensorStore`: the named tensors of a model, whatever file they live in — a GGUF file or a
//! safetensors model (one file, a sharded checkpoint's index, or a Hugging Face folder) — with their
//! type, shape and bytes straight from the memory map, and checked access as a matrix for
//! [`matmul`](crate::matmul::matmul) or as f32.
//!
//! Key decision: the store never converts or renames. Tensors keep the names and types of the
//! file (GGUF names in a GGUF, Hugging Face names in safetensors); shapes are given in ggml order
//! (row length first) for both, so a Hugging Face `Linear` weight `[out, in]` and its GGUF twin
//! both read as `[in, out]`. Safetensors F32/F16/BF16 tensors are used in place as the GGML types
//! of the same layout; other dtypes (e.g. BERT's I64 `position_ids`) are listed but refused on use.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crunch_core::gguf::GgufFile;
use crunch_core::safetensors::SafetensorsModel;
use crunch_core::GgmlType;

use crate::error::{ModelError, Result};
use crate::matmul::WeightView;

/// Which file format the tensors come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreFormat {
    Gguf,
    Safetensors,
}

/// One tensor's entry: name, ggml-order dimensions and type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMeta {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    /// The GGML type of the bytes; `None` for a safetensors dtype crunch cannot compute with.
    pub ty: Option<GgmlType>,
    /// The type as the file names it (`Q8_0`, `F32`, `I64`…).
    pub stored_type: String,
    /// Index into the format's own tensor list.
    index: usize,
}

impl TensorMeta {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Shape as `[d0, d1, …]` in ggml order.
    pub fn shape_string(&self) -> String {
        let d: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        format!("[{}]", d.join(", "))
    }
}

enum Source {
    Gguf(GgufFile),
    Safetensors(SafetensorsModel),
}

/// The tensors of one model, memory-mapped; nothing is read until a tensor is asked for.
pub struct TensorStore {
    path: PathBuf,
    source: Source,
    tensors: Vec<TensorMeta>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for TensorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorStore")
            .field("path", &self.path)
            .field("format", &self.format())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Does the file start with the GGUF magic?
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    path.is_file() && std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}

impl TensorStore {
    /// Open a GGUF file (recognised by its magic), or a safetensors file, sharded index or folder.
    ///
    /// # Errors
    /// The GGUF or safetensors reader's errors (they name the file and what is wrong with it).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(ModelError::File { path: path.display().to_string(), reason: "no such file or folder".into() });
        }
        if is_gguf(path) {
            Ok(Self::from_gguf(GgufFile::open(path)?))
        } else {
            Ok(Self::from_safetensors(SafetensorsModel::open(path)?))
        }
    }

    pub fn from_gguf(file: GgufFile) -> Self {
        let tensors = file
            .tensors()
            .iter()
            .enumerate()
            .map(|(index, t)| TensorMeta {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: Some(t.ty),
                stored_type: t.ty.to_string(),
                index,
            })
            .collect();
        Self::assemble(file.path.clone(), Source::Gguf(file), tensors)
    }

    pub fn from_safetensors(model: SafetensorsModel) -> Self {
        let tensors = model
            .tensors()
            .iter()
            .enumerate()
            .map(|(index, t)| TensorMeta {
                name: t.name.clone(),
                dims: t.ggml_dims(),
                ty: t.dtype.ggml_type(),
                stored_type: t.dtype.to_string(),
                index,
            })
            .collect();
        Self::assemble(model.path().to_path_buf(), Source::Safetensors(model), tensors)
    }

    fn assemble(path: PathBuf, source: Source, tensors: Vec<TensorMeta>) -> Self {
        let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        TensorStore { path, source, tensors, by_name }
    }

    /// The file that was opened (the GGUF, the single safetensors file or the shard index).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> StoreFormat {
        match self.source {
            Source::Gguf(_) => StoreFormat::Gguf,
            Source::Safetensors(_) => StoreFormat::Safetensors,
        }
    }

    /// The GGUF file, for its metadata and vocabulary.
    pub fn gguf(&self) -> Option<&GgufFile> {
        match &self.source {
            Source::Gguf(f) => Some(f),
            Source::Safetensors(_) => None,
        }
    }

    pub fn safetensors(&self) -> Option<&SafetensorsModel> {
        match &self.source {
            Source::Safetensors(m) => Some(m),
            Source::Gguf(_) => None,
        }
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorMeta] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Option<&TensorMeta> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// A tensor's entry, or [`ModelError::MissingTensor`] naming it and the file.
    pub fn meta(&self, name: &str) -> Result<&TensorMeta> {
        self.get(name).ok_or_else(|| ModelError::MissingTensor(format!("{name} (in {})", self.path.display())))
    }

    /// The raw bytes of a tensor, straight from the memory map.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let m = self.meta(name)?;
        Ok(match &self.source {
            Source::Gguf(f) => f.tensor_data(&f.tensors()[m.index]),
            Source::Safetensors(s) => s.data(name)?,
        })
    }

    /// The tensor's GGML type, or an error if crunch cannot compute with it.
    pub fn ggml_type(&self, name: &str) -> Result<GgmlType> {
        let m = self.meta(name)?;
        match m.ty {
            Some(ty) if crunch_quant::kernels(ty).is_some() => Ok(ty),
            Some(ty) => Err(ModelError::UnsupportedType { tensor: name.to_string(), ty, what: "dequantize" }),
            None => Err(ModelError::Input(format!(
                "tensor {name}: stored as {}, which crunch cannot compute with (F32, F16, BF16 or a GGML type expected)",
                m.stored_type
            ))),
        }
    }

    /// A 2-D weight of `n_out` rows of `n_in` (ggml dims `[n_in, n_out]`, trailing 1s allowed), ready
    /// for [`matmul`](crate::matmul::matmul) or row lookups.
    ///
    /// # Errors
    /// Missing tensor, another shape, or a type without kernels.
    pub fn matrix(&self, name: &str, n_in: usize, n_out: usize) -> Result<WeightView<'_>> {
        let m = self.meta(name)?;
        let d = &m.dims;
        let ok = d.len() >= 2 && d[0] == n_in as u64 && d[1] == n_out as u64 && d[2..].iter().all(|&x| x == 1);
        if !ok {
            return Err(ModelError::BadShape {
                tensor: name.to_string(),
                found: m.shape_string(),
                expected: format!("[{n_in}, {n_out}]"),
            });
        }
        let ty = self.ggml_type(name)?;
        let view = WeightView { name: &m.name, ty, n_in, n_out, data: self.bytes(name)? };
        Ok(view)
    }

    /// A tensor of `len` elements in one row (a bias or norm weight; `[len]` or `[len, 1, …]`), as f32.
    ///
    /// # Errors
    /// Missing tensor, another shape, or a type without kernels.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let m = self.meta(name)?;
        if m.n_elements() != len as u64 || m.dims.first().copied() != Some(len as u64) {
            return Err(ModelError::BadShape {
                tensor: name.to_string(),
                found: m.shape_string(),
                expected: format!("[{len}]"),
            });
        }
        self.to_f32(name)
    }

    /// [`TensorStore::vector`] for a tensor that may be absent.
    pub fn optional_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        if self.contains(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The whole tensor dequantized to f32, row by row (ggml order).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let ty = self.ggml_type(name)?;
        let m = self.meta(name)?;
        let n = usize::try_from(m.n_elements())
            .map_err(|_| ModelError::Input(format!("tensor {name}: {} elements", m.n_elements())))?;
        let row = m.dims.first().copied().unwrap_or(1) as usize;
        let data = self.bytes(name)?;
        let mut out = vec![0f32; n];
        if n > 0 {
            crunch_quant::dequantize_rows(ty, data, row, &mut out).map_err(|e| ModelError::BadShape {
                tensor: name.to_string(),
                found: format!("{} bytes of {ty} for {}", data.len(), m.shape_string()),
                expected: e.to_string(),
            })?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crunch_core::gguf::{GgufWriter, TensorSpec};

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn gguf_and_safetensors_read_alike() {
        let dir = std::env::temp_dir().join(format!("crunch-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let w: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..4).map(|i| i as f32).collect();

        // safetensors: PyTorch shape [4, 6] (4 rows of 6).
        let st = dir.join("m.safetensors");
        use crunch_core::safetensors::{Dtype, SafetensorsWriter, TensorSpec as StSpec};
        let specs = [StSpec::new("w", Dtype::F32, vec![4, 6]), StSpec::new("b", Dtype::F32, vec![4])];
        let mut wr = SafetensorsWriter::create(&st, Default::default(), &specs).unwrap();
        wr.write_tensor("w", &f32_bytes(&w)).unwrap();
        wr.write_tensor("b", &f32_bytes(&b)).unwrap();
        wr.finish().unwrap();

        // GGUF: dims [6, 4].
        let gg = dir.join("m.gguf");
        let mut md = crunch_core::gguf::Metadata::default();
        md.set("general.architecture", crunch_core::gguf::Value::string("test"));
        let spec = |name: &str, dims: Vec<u64>| TensorSpec { name: name.into(), ty: GgmlType::F32, dims };
        let mut gw = GgufWriter::create(&gg, md, &[spec("w", vec![6, 4]), spec("b", vec![4])]).unwrap();
        gw.write_tensor("w", &f32_bytes(&w)).unwrap();
        gw.write_tensor("b", &f32_bytes(&b)).unwrap();
        gw.finish().unwrap();

        for p in [&st, &gg] {
            let s = TensorStore::open(p).unwrap();
            assert_eq!(s.get("w").unwrap().dims, vec![6, 4]);
            let m = s.matrix("w", 6, 4).unwrap();
            let mut row = vec![0f32; 6];
            m.dequantize_row(2, &mut row).unwrap();
            assert_eq!(row, w[12..18]);
            assert_eq!(s.vector("b", 4).unwrap(), b);
            assert_eq!(s.to_f32("w").unwrap(), w);
            let e = s.matrix("w", 4, 6).unwrap_err().to_string();
            assert!(e.contains("tensor w") && e.contains("[6, 4]"), "{e}");
            let e = s.vector("nope", 4).unwrap_err().to_string();
            assert!(e.contains("missing tensor nope"), "{e}");
            assert!(s.vector("w", 24).is_err());
        }
        assert_eq!(TensorStore::open(&gg).unwrap().format(), StoreFormat::Gguf);
        assert_eq!(TensorStore::open(&st).unwrap().format(), StoreFormat::Safetensors);
        assert!(TensorStore::open(dir.join("absent")).unwrap_err().to_string().contains("no such file"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

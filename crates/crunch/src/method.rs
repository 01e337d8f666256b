//! How tensors are quantized: one name per method, shared by every job and the wire format.

use serde::{Deserialize, Serialize};

/// A quantization method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Method {
    /// Round to nearest on the type's grid (llama.cpp without an imatrix).
    #[serde(rename = "rtn")]
    Rtn,
    /// Importance-weighted rounding with activation statistics from calibration text.
    #[serde(rename = "imatrix")]
    Imatrix,
    /// GPTQ: error feedback over columns with the calibration Hessian.
    #[serde(rename = "gptq")]
    Gptq,
    /// AWQ: activation-aware per-channel scales folded into the previous norm, then rounding.
    #[serde(rename = "awq")]
    Awq,
    /// AWQ scales, then GPTQ.
    #[serde(rename = "awq,gptq")]
    AwqGptq,
}

impl Method {
    /// Every method, by name.
    pub const ALL: [Method; 5] = [Method::Rtn, Method::Imatrix, Method::Gptq, Method::Awq, Method::AwqGptq];

    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Imatrix => "imatrix",
            Method::Gptq => "gptq",
            Method::Awq => "awq",
            Method::AwqGptq => "awq,gptq",
        }
    }

    /// Whether the method runs AWQ's scale search.
    pub fn uses_awq(self) -> bool {
        matches!(self, Method::Awq | Method::AwqGptq)
    }

    /// Whether the method runs GPTQ.
    pub fn uses_gptq(self) -> bool {
        matches!(self, Method::Gptq | Method::AwqGptq)
    }

    /// Whether the method needs a block-by-block calibration run over text (GPTQ, AWQ).
    pub fn is_calibrated(self) -> bool {
        self.uses_awq() || self.uses_gptq()
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    /// `rtn`, `imatrix`, `gptq`, `awq`, `awq,gptq` (also `awq+gptq`, `gptq,awq`), any case.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut parts: Vec<String> = s.split([',', '+']).map(|p| p.trim().to_ascii_lowercase()).collect();
        parts.sort();
        parts.dedup();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        match parts.as_slice() {
            ["rtn"] | ["none"] => Ok(Method::Rtn),
            ["imatrix"] => Ok(Method::Imatrix),
            ["gptq"] => Ok(Method::Gptq),
            ["awq"] => Ok(Method::Awq),
            ["awq", "gptq"] => Ok(Method::AwqGptq),
            _ => Err(format!("unknown method {s:?}; known: rtn, imatrix, gptq, awq, awq,gptq")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{}\"", m.name()));
            assert_eq!(serde_json::from_str::<Method>(&format!("\"{}\"", m.name())).unwrap(), m);
        }
        assert_eq!("GPTQ+awq".parse::<Method>().unwrap(), Method::AwqGptq);
        assert!("awq,imatrix".parse::<Method>().is_err());
        assert!(Method::AwqGptq.uses_awq() && Method::AwqGptq.uses_gptq() && !Method::Imatrix.is_calibrated());
    }
}

//! Reading a job from a request body. `crunch::job::from_json` names the field at fault for
//! unknown and missing fields, but a value of the wrong type inside an internally tagged enum
//! reaches it without its path (serde buffers the variant's content first). When that happens the
//! body is read again as the kind's own struct, whose deserializer keeps the path, so the `400`
//! names the field (`ctx`, `calibration.text`).

use crate::error::ApiError;
use crunch::job::*;
use serde::de::DeserializeOwned;

fn path_of<T: DeserializeOwned>(v: serde_json::Value) -> Option<(String, String)> {
    let e = serde_path_to_error::deserialize::<_, T>(v).err()?;
    let path = e.path().to_string();
    (path != "." && !path.is_empty()).then(|| (path, e.into_inner().to_string()))
}

/// The wrong field of `body` as (path, message), found by reading it as its kind's struct.
fn locate(body: &[u8]) -> Option<(String, String)> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object_mut()?;
    let kind = obj.remove("kind")?.as_str()?.to_string();
    let rest = serde_json::Value::Object(std::mem::take(obj));
    match kind.as_str() {
        "quantize" => path_of::<QuantizeJob>(rest),
        "convert" => path_of::<ConvertJob>(rest),
        "export" => path_of::<ExportJob>(rest),
        "imatrix" => path_of::<ImatrixJob>(rest),
        "perplexity" => path_of::<PerplexityJob>(rest),
        "compare" => path_of::<CompareJob>(rest),
        "choice" => path_of::<ChoiceJob>(rest),
        "bench" => path_of::<BenchJob>(rest),
        "fit" => path_of::<FitJob>(rest),
        "search" => path_of::<SearchJob>(rest),
        "inspect" => path_of::<InspectJob>(rest),
        "verify" => path_of::<VerifyJob>(rest),
        _ => None,
    }
}

/// The job in `body`, or a `400` naming the field at fault.
///
/// # Errors
/// Malformed JSON, an unknown kind, a wrong, missing or unknown field.
pub fn job_from_json(body: &[u8]) -> Result<Job, ApiError> {
    crunch::job::from_json(body).map_err(|e| match e {
        crunch::Error::Field { field, message } if field == "job" => match locate(body) {
            Some((path, msg)) => ApiError::field(path, msg),
            None => ApiError::field(field, message),
        },
        e => ApiError::from_crunch(e, axum::http::StatusCode::BAD_REQUEST),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_types_are_named_by_their_path() {
        let e = job_from_json(br#"{"kind":"perplexity","model":"m","text":"t","ctx":"many"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("ctx"));
        let e = job_from_json(
            br#"{"kind":"quantize","model":"m","output":"o","type":"Q8_0","calibration":{"method":"gptq","text":5}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("calibration.text"), "{e}");
        let e = job_from_json(br#"{"kind":"quantize","model":"m","output":"o","type":"Q8_0","bogus":1}"#).unwrap_err();
        assert!(e.message.contains("bogus"), "{e}");
        assert!(job_from_json(br#"{"kind":"inspect","path":"m"}"#).is_ok());
    }
}

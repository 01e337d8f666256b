//! Reading a job from a request body: one parsing path, the library's. `crunch::job::from_json`
//! reads the kind first, then the kind's own struct with its field paths kept, so a wrong,
//! missing or unknown field is a `400` naming it (`ctx`, `calibration.text`, `settings.band`).

use crate::error::ApiError;
use crunch::job::Job;

/// The job in `body`, or a `400` naming the field at fault (`job` for malformed JSON).
///
/// # Errors
/// Malformed JSON, an unknown kind, a wrong, missing or unknown field.
pub fn job_from_json(body: &[u8]) -> Result<Job, ApiError> {
    crunch::job::from_json(body).map_err(|e| ApiError::from_crunch(e, axum::http::StatusCode::BAD_REQUEST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_fields_are_named_by_their_path() {
        let field = |body: &str| job_from_json(body.as_bytes()).unwrap_err().field;
        assert_eq!(field(r#"{"kind":"perplexity","model":"m","text":"t","ctx":"many"}"#).as_deref(), Some("ctx"));
        assert_eq!(
            field(
                r#"{"kind":"quantize","model":"m","output":"o","type":"Q8_0","calibration":{"method":"gptq","text":5}}"#
            )
            .as_deref(),
            Some("calibration.text")
        );
        assert_eq!(field(r#"{"kind":"quantize","model":7,"output":"o","type":"Q8_0"}"#).as_deref(), Some("model"));
        assert_eq!(
            field(r#"{"kind":"fit","model":"m","max_bpw":4,"settings":{"text":"t","band":"wide"}}"#).as_deref(),
            Some("settings.band")
        );
        assert_eq!(field(r#"{"kind":"quantize","output":"o","type":"Q8_0"}"#).as_deref(), Some("model"));
        assert_eq!(field(r#"{"kind":"teleport"}"#).as_deref(), Some("kind"));
        assert_eq!(field(r#"{"kind":"quantize","#).as_deref(), Some("job"));
        let e = job_from_json(br#"{"kind":"quantize","model":"m","output":"o","type":"Q8_0","bogus":1}"#).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(e.field.as_deref(), Some("bogus"));
        assert!(e.message.contains("bogus"), "{e}");
        assert!(job_from_json(br#"{"kind":"inspect","path":"m"}"#).is_ok());
    }
}

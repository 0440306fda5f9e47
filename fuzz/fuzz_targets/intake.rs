//! libFuzzer target for the intake: any bytes, as a whole Lambda event (when JSON) and as
//! the SNS message. Nothing may panic; every error must be free of raw control characters.
//!
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run intake fuzz/corpus/intake -- -max_total_time=300
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_remediation::intake;

fn check(message: &str) {
    assert!(
        !message.chars().any(char::is_control),
        "raw control character in error: {message:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = serde_json::from_slice::<serde_json::Value>(data) {
        match intake::parse_event(&event, Some("arn:aws:sns:us-east-1:123456789012:alerts")) {
            Err(err) => check(&err.to_string()),
            Ok(deliveries) => {
                for delivery in deliveries {
                    match delivery.content {
                        Err(err) => check(&err.to_string()),
                        Ok(group) => {
                            for alert in &group.alerts {
                                for function in intake::KNOWN_REMEDIATIONS {
                                    if let Err(
                                        intake::Rejection::Invalid(why)
                                        | intake::Rejection::OtherFunction(why),
                                    ) = intake::validate_alert(alert, function)
                                    {
                                        check(&why);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some(revert) = intake::parse_revert(&event, None)
            && let Err(err) = revert.request
        {
            check(&err.to_string());
        }
    }
    if let Err(err) = intake::parse_message(&String::from_utf8_lossy(data)) {
        check(&err.to_string());
    }
});

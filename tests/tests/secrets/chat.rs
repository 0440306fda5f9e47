//! The report's chat form, as the function publishes it: an SNS per-protocol message whose
//! `https` variant (what Amazon Q Developer in chat applications receives) is a custom
//! notification that the documented event schema accepts.

use serde_json::Value;

/// The documented custom-notification event schema.
const SCHEMA: &str = include_str!("../../fixtures/chatbot-custom-notification.schema.json");

/// A form-encoded field (`application/x-www-form-urlencoded`, as SNS's query API is sent).
fn form_field(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (decode(key) == name).then(|| decode(value))
    })
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).expect("percent escape"));
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).expect("UTF-8 form value")
}

/// Checks one SNS Publish request body: the report JSON for every subscriber, and its chat
/// form for HTTPS subscribers, valid against the schema. Returns the chat form.
pub fn assert_chat_variant(publish_body: &str) -> Value {
    assert_eq!(
        form_field(publish_body, "MessageStructure").as_deref(),
        Some("json"),
        "{publish_body}"
    );
    let message = form_field(publish_body, "Message").expect("Message");
    let variants: Value = serde_json::from_str(&message).expect("per-protocol JSON");
    let report: Value = serde_json::from_str(variants["default"].as_str().expect("default"))
        .expect("the default variant is the report JSON");
    assert!(report["outcomes"].is_array(), "{report}");
    let chat: Value = serde_json::from_str(variants["https"].as_str().expect("https"))
        .expect("the https variant is JSON");
    let schema: Value = serde_json::from_str(SCHEMA).expect("schema");
    let validator = jsonschema::draft7::new(&schema).expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&chat)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{chat:#}");
    // The same report: its function and trace id.
    assert_eq!(chat["id"], report["trace_id"], "{chat:#}");
    let title = chat["content"]["title"].as_str().unwrap_or_default();
    assert!(
        title.contains(report["function"].as_str().unwrap_or("?")),
        "{title}"
    );
    chat
}

#[test]
fn form_fields_are_decoded() {
    let body = "Action=Publish&Message=%7B%22a%22%3A+1%7D&MessageStructure=json";
    assert_eq!(form_field(body, "Message").as_deref(), Some("{\"a\": 1}"));
    assert_eq!(form_field(body, "Subject"), None);
}
